"""builder.media.isomd5 against Debian's isomd5sum (implantisomd5 / checkisomd5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.media import isomd5, writer
from builder.run import run


def make_iso(folder: Path, out: Path, size: int, seed: int = 1) -> Path:
    """A plain ISO 9660 image holding one file of `size` pseudo-random bytes."""
    tree = folder / f"tree-{seed}"
    tree.mkdir()
    data = bytearray()
    block = seed.to_bytes(4, "little") * 1024
    while len(data) < size:
        data += block
        block = bytes((b * 31 + 7) & 0xFF for b in block[:64]) * 64
    (tree / "data.bin").write_bytes(bytes(data[:size]))
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-V", "MD5 TEST", tree],
        env={"SOURCE_DATE_EPOCH": "1600000000"})
    return out


def checkisomd5(path: Path) -> bool:
    done = run(["checkisomd5", path], check=False, timeout=300)
    return done.returncode == 0 and b"PASS" in done.stdout + done.stderr


# Not below ~1 MB: with fragments smaller than isomd5sum's 32 KiB block, fewer than 20 sums
# fit and Debian's own checkisomd5 rejects what its implantisomd5 wrote.
@pytest.mark.parametrize("size", [1_000_000, 5_000_000, 17_000_001])
def test_implant_matches_implantisomd5_byte_for_byte(tmp_path: Path, size: int) -> None:
    ours = make_iso(tmp_path, tmp_path / "ours.iso", size)
    theirs = tmp_path / "theirs.iso"
    shutil.copyfile(ours, theirs)
    run(["implantisomd5", "-f", theirs])
    md5 = isomd5.implant(ours)
    assert ours.read_bytes() == theirs.read_bytes()
    assert checkisomd5(ours)
    found = isomd5.read_implanted(ours)
    assert found is not None and found.md5 == md5 and len(found.fragment_sums) == 60


def test_reimplant_replaces_the_old_sum(tmp_path: Path) -> None:
    iso = make_iso(tmp_path, tmp_path / "a.iso", 3_000_000)
    run(["implantisomd5", iso])
    with iso.open("r+b") as f:  # change the content after the first implant
        f.seek(os.path.getsize(iso) - 40 * 2048)
        f.write(b"changed")
    assert not checkisomd5(iso)
    assert not isomd5.check(iso)
    isomd5.implant(iso)
    assert checkisomd5(iso)
    assert isomd5.check(iso)


def test_check_agrees_with_checkisomd5_on_damage(tmp_path: Path) -> None:
    iso = make_iso(tmp_path, tmp_path / "a.iso", 4_000_000)
    isomd5.implant(iso)
    assert isomd5.check(iso) and checkisomd5(iso)
    with iso.open("r+b") as f:
        f.seek(3_000_000)
        byte = f.read(1)
        f.seek(3_000_000)
        f.write(bytes([byte[0] ^ 1]))
    assert not isomd5.check(iso)
    assert not checkisomd5(iso)


def test_last_fifteen_sectors_and_appdata_are_not_covered(tmp_path: Path) -> None:
    iso = make_iso(tmp_path, tmp_path / "a.iso", 2_000_000)
    isomd5.implant(iso)
    with iso.open("r+b") as f:
        f.seek(isomd5.volume_size(f.fileno()) - 2048)  # inside the skipped sectors
        f.write(b"ignored")
    assert isomd5.check(iso) and checkisomd5(iso)


def test_image_without_sum_does_not_check(tmp_path: Path) -> None:
    iso = make_iso(tmp_path, tmp_path / "a.iso", 1_000_000)
    assert isomd5.read_implanted(iso) is None
    assert not isomd5.check(iso)


def test_streamed_digest_equals_one_pass(tmp_path: Path) -> None:
    """MediaDigest fed in odd-sized pieces (as the repack's hasher does) gives the same sums."""
    iso = make_iso(tmp_path, tmp_path / "a.iso", 6_000_000)
    fd = os.open(iso, os.O_RDONLY)
    try:
        size = isomd5.volume_size(fd)
        whole = isomd5.digest_file(fd, size).result()
        streamed = isomd5.MediaDigest(size)
        offset, step = 0, 12_345
        while not streamed.done:
            streamed.update(os.pread(fd, step, offset))
            offset += step
            step = step * 7 % 1_000_003 + 1
        assert streamed.result() == whole
    finally:
        os.close(fd)


def test_hasher_reads_copies_from_their_source_and_a_short_file_as_zeros(
        tmp_path: Path) -> None:
    """The repack's hasher (builder.media.writer.Hasher) reads the ranges the writer copied
    from the base in the base, the rest in the output, and past the output's end zeros: the
    sums equal one pass over the finished image."""
    base = make_iso(tmp_path, tmp_path / "base.iso", 6_000_000)
    source = base.read_bytes()
    out = tmp_path / "out.iso"
    out.write_bytes(b"")
    # Output: the base's first 100,001 bytes as written, two odd ranges copied from elsewhere
    # in the base (hashed from there), a written gap between, and the volume's last 3 sectors
    # left unwritten (a hole the file does not reach yet).
    copies = [(100_001, 2_000_003, 300_000), (2_500_000, 3_000_000, 50)]
    with base.open("rb") as f:
        volume = isomd5.volume_size(f.fileno())
    image = bytearray(source[:volume - 3 * isomd5.SECTOR])
    for start, length, at in copies:
        image[start:start + length] = source[at:at + length]
    fd = os.open(out, os.O_RDWR)
    base_fd = os.open(base, os.O_RDONLY)
    try:
        hasher = writer.Hasher(fd, volume)
        hasher.start()
        for start, length, at in copies:
            hasher.copied(start, length, base_fd, at)
        step = 777_777
        for offset in range(0, len(image), step):
            os.pwrite(fd, bytes(image[offset:offset + step]), offset)
            hasher.advance(min(offset + step, len(image)))
        hasher.advance(volume)
        hasher.join(timeout=60)
        assert hasher.error is None
        os.ftruncate(fd, volume)
        assert hasher.digest.result() == isomd5.digest_file(fd, volume).result()
    finally:
        os.close(fd)
        os.close(base_fd)


def test_fragment_cuts() -> None:
    length = 100 * isomd5.BLOCK + 5
    cuts = isomd5.fragment_cuts(length)
    assert len(cuts) == 20
    assert [n for _, n in cuts] == list(range(1, 21))
    assert all(offset % isomd5.BLOCK == 0 for offset, _ in cuts)
    # Fragments smaller than a block: some sums fall together, as in isomd5sum.
    small = isomd5.fragment_cuts(10 * isomd5.BLOCK)
    assert len(small) < 20
    assert [n for _, n in small] == sorted({n for _, n in small})


def cuts_isomd5sum_1_0(length: int, count: int = isomd5.FRAGMENT_COUNT) -> list[tuple[int, int]]:
    """Where isomd5sum 1.0 (CentOS 7's checker) takes its fragment sums: after the first block
    whose start has `start * (count + 1) // length` == k, i.e. start >= k * length / 21."""
    cuts: list[tuple[int, int]] = []
    previous = 0
    for k in range(1, count + 1):
        start = -(-k * length // ((count + 1) * isomd5.BLOCK)) * isomd5.BLOCK
        if start >= length:
            break
        fragment = start * (count + 1) // length
        if fragment != previous:
            cuts.append((min(start + isomd5.BLOCK, length), fragment))
            previous = fragment
    return cuts


@given(st.integers(min_value=1, max_value=8 << 20))  # sectors: up to 16 GiB images
@settings(max_examples=3000, deadline=None)
def test_isomd5sum_1_0_and_1_2_take_fragment_sums_at_the_same_blocks(sectors: int) -> None:
    length = sectors * isomd5.SECTOR
    assert cuts_isomd5sum_1_0(length) == isomd5.fragment_cuts(length)


def test_the_fragment_formulas_differ_on_odd_lengths() -> None:
    """Negative control: the comparison above can fail (lengths that are not whole sectors)."""
    odd = [n for n in range(21 * isomd5.BLOCK, 21 * isomd5.BLOCK + 4000)
           if cuts_isomd5sum_1_0(n) != isomd5.fragment_cuts(n)]
    assert odd
