"""The isohybrid MBR + GPT and El Torito of repacked ISOs: sgdisk -v and xorriso's reports.

Two kinds of base: the fixture ISO (xorriso -isohybrid-gpt-basdat) and one made the way
CentOS 7 media are (mkisofs options, then syslinux `isohybrid --uefi`).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pycdlib
import pytest

from builder.errors import InputError
from builder.media import hybrid, iso
from tests.fixtures import centos_iso, sgdisk_problems
from tests.test_iso_support import (
    ONE_HOST,
    boot_setup,
    isohybrid_base,
    ksbuild_peak_rss,
    write_site,
    xorriso_report,
)

KS = b"# ksbuild test kickstart\nreboot\n"


@pytest.fixture(scope="module")
def isohybrid_made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return isohybrid_base(tmp_path_factory.mktemp("base") / "isohybrid.iso")


@pytest.fixture(params=["xorriso", "isohybrid"])
def base(request: pytest.FixtureRequest, isohybrid_made: Path) -> Path:
    return centos_iso() if request.param == "xorriso" else isohybrid_made


def repack(base: Path, out: Path) -> Path:
    iso.repack(base, out, iso.RepackOptions(payload=iso.fixed(KS), epoch=1_600_000_000))
    return out


def test_bases_are_sound(base: Path) -> None:
    assert sgdisk_problems(base) == []
    assert "MBR isohybrid cyl-align-on GPT" in " ".join(xorriso_report(base))


def test_repack_keeps_mbr_gpt_and_el_torito(base: Path, tmp_path: Path) -> None:
    out = repack(base, tmp_path / "out.iso")
    assert sgdisk_problems(out) == []
    # Same boot setup; the report names /images/efiboot.img for the MBR and GPT partitions
    # only when their start and size match the file, so the moved LBAs are checked too.
    assert boot_setup(out) == boot_setup(base)
    report = "\n".join(xorriso_report(out))
    assert "MBR partition path :   2  /images/efiboot.img" in report
    assert "GPT partition path :   2  /images/efiboot.img" in report
    assert "boot-info-table isohybrid-suitable" in report
    assert "CRC wrong" not in report and "problems" not in report


def test_mbr_loads_isolinux_bin_from_its_new_place(base: Path, tmp_path: Path) -> None:
    out = repack(base, tmp_path / "out.iso")
    image = pycdlib.PyCdlib()
    image.open(str(out))
    try:
        lba = image.get_record(rr_path="/isolinux/isolinux.bin").extent_location()
    finally:
        image.close()
    with out.open("rb") as f:
        (loaded,) = struct.unpack("<I", f.read(512)[432:436])
    assert loaded == lba * 4


def test_gpt_crcs_and_backup(base: Path, tmp_path: Path) -> None:
    out = repack(base, tmp_path / "out.iso")
    data = out.read_bytes()
    header = data[512:512 + 92]
    assert header[:8] == b"EFI PART"
    backup_lba, entries_lba, count, size, array_crc = (
        struct.unpack_from("<Q", header, 32)[0], *struct.unpack_from("<QIII", header, 72))
    assert backup_lba == len(data) // 512 - 1  # the backup header is the file's last sector
    array = data[entries_lba * 512:entries_lba * 512 + count * size]
    assert zlib.crc32(array) == array_crc
    zeroed = header[:16] + b"\0\0\0\0" + header[20:]
    assert zlib.crc32(zeroed) == struct.unpack_from("<I", header, 16)[0]
    backup = data[backup_lba * 512:backup_lba * 512 + 92]
    assert backup[:8] == b"EFI PART"
    (backup_entries,) = struct.unpack_from("<Q", backup, 72)
    assert data[backup_entries * 512:backup_entries * 512 + count * size] == array


def test_plain_pycdlib_breaks_what_we_fix(base: Path, tmp_path: Path) -> None:
    """Negative control: pycdlib 1.22 alone leaves GPT CRC errors; the checks above see them."""
    out = tmp_path / "pycdlib.iso"
    image = pycdlib.PyCdlib()
    image.open(str(base))
    try:
        import io
        image.add_fp(io.BytesIO(KS), len(KS), "/KS.CFG;1", rr_name="ks.cfg",
                     joliet_path="/ks.cfg")
        image.write(str(out))
    finally:
        image.close()
    assert any("CRC" in problem for problem in sgdisk_problems(out))


def base_layout(path: Path) -> hybrid.Layout:
    image, handle, head, size = iso.open_base(path)
    try:
        boot = iso._boot_entries(image, str(path))
        volume = struct.unpack_from("<I", head, 16 * 2048 + 80)[0] * 2048
        return hybrid.Layout(volume, size, boot.boot_lba, boot.efi_lba, boot.efi_bytes)
    finally:
        image.close()
        handle.close()


def test_unknown_partition_is_refused(isohybrid_made: Path) -> None:
    layout = base_layout(isohybrid_made)
    head = bytearray(isohybrid_made.read_bytes()[:hybrid.SYSTEM_AREA])
    hybrid.rebuild(bytes(head), layout, layout, "base.iso")  # as made: fine
    struct.pack_into("<BBBBBBBBII", head, hybrid.MBR_TABLE + 32, 0, 0, 2, 0, 0x83, 0, 2, 0,
                     500, 100)  # MBR partition 3, somewhere in the middle
    with pytest.raises(InputError, match="MBR partition 3 .* does not know how to move it"):
        hybrid.rebuild(bytes(head), layout, layout, "base.iso")


def geometry(image: Path) -> tuple[int, int]:
    """(heads, sectors per track) the MBR's CHS fields describe."""
    with image.open("rb") as f:
        return hybrid._geometry(f.read(512))


@pytest.mark.parametrize("kind", ["xorriso", "isohybrid"])
def test_over_one_gib_keeps_geometry_and_memory_flat(tmp_path: Path, kind: str) -> None:
    """Bases over 1024 cylinders: xorriso then uses 71 heads; syslinux's isohybrid keeps 64x32
    and clamps the CHS at cylinder 1023, where pycdlib 1.22 misreads the geometry. The repack
    runs in a child process whose peak memory must stay small although the ISO is 1.1 GiB."""
    size = 1100 << 20
    big = centos_iso(size_padding=size) if kind == "xorriso" else \
        isohybrid_base(tmp_path / "big-base.iso", padding=size)
    site = write_site(tmp_path, ONE_HOST)
    out = tmp_path / "big.iso"
    try:
        _check_big(big, site, out, kind)
    finally:  # pytest keeps the last runs' folders: do not leave gigabytes behind
        out.unlink(missing_ok=True)
        if kind == "isohybrid":
            big.unlink(missing_ok=True)


def _check_big(big: Path, site: Path, out: Path, kind: str) -> None:
    done, peak_kib = ksbuild_peak_rss("iso", site, "--base", big, "-o", out)
    assert done.returncode == 0, done.stderr
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"
    assert sgdisk_problems(out) == []
    assert boot_setup(out) == boot_setup(big)
    heads, sectors = geometry(big)
    assert (heads, sectors) == ((71, 32) if kind == "xorriso" else (64, 32))
    assert geometry(out) == (heads, sectors)
    assert out.stat().st_size % (heads * sectors * 512) == 0  # whole cylinders, as the base
    if kind == "isohybrid":
        with out.open("rb") as f:
            mbr = f.read(512)
        assert mbr[446 + 5:446 + 8] == b"\x3f\xe0\xff"  # end CHS clamped as isohybrid does
