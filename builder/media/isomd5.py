"""The media checksum of isomd5sum (`implantisomd5` / `checkisomd5`), our own implementation.

The installer's "Test this media" entry (`rd.live.check`) and `checkisomd5` compare an MD5
kept in the primary volume descriptor's 512-byte application-use area (offset 883) with the
MD5 of the image. The format, as isomd5sum 1.2 writes it:

    ISO MD5SUM = <32 hex>;SKIPSECTORS = 15;RHLISOSTATUS=<0|1>;FRAGMENT SUMS = <60 hex>;
    FRAGMENT COUNT = 20;THIS IS NOT THE SAME AS RUNNING MD5SUM ON THIS ISO!!

(one line, padded with spaces to 512 bytes). The MD5 covers the volume (the PVD's volume space
size, not the file: a hybrid image's padding and backup GPT lie beyond it) minus its last 15
sectors, with the application-use area read as 512 spaces. The image is read in 32 KiB blocks;
the covered length is split into FRAGMENT COUNT + 1 fragments, and after the first block that
starts in a new fragment the first hex digit of the first three bytes of the running MD5 are
appended to the fragment sums (the media check stops at the first wrong one).

isomd5sum 1.0 (CentOS 7's own checker) picks the fragment of a block as
`offset * 21 // length` where 1.2 uses `offset // (length // 21)`. For a length of whole
2048-byte sectors both pick the same blocks (tests/test_iso_md5.py checks it), so one implant
suits both. Debian's checkisomd5 (1.2) verifies our output in the tests.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError

SECTOR = 2048
BLOCK = 16 * SECTOR  # isomd5sum reads 32 KiB at a time; fragment edges fall on these blocks
PVD_OFFSET = 16 * SECTOR
APPDATA_OFFSET = 883
APPDATA_SIZE = 512
SKIP_SECTORS = 15
FRAGMENT_COUNT = 20
FRAGMENT_SUM_SIZE = 60
NOTICE = "THIS IS NOT THE SAME AS RUNNING MD5SUM ON THIS ISO!!"


@dataclass(frozen=True)
class Implanted:
    md5: str
    fragment_sums: str
    fragment_count: int
    skip_sectors: int
    supported: bool


def volume_size(fd: int) -> int:
    """Bytes in the ISO 9660 volume, from the primary volume descriptor at sector 16."""
    pvd = os.pread(fd, SECTOR, PVD_OFFSET)
    if len(pvd) < SECTOR or pvd[0] != 1 or pvd[1:6] != b"CD001":
        raise InputError("no ISO 9660 primary volume descriptor at sector 16")
    (blocks,) = struct.unpack_from(">I", pvd, 84)  # big-endian half, as isomd5sum reads it
    return int(blocks) * SECTOR


def fragment_cuts(length: int, count: int = FRAGMENT_COUNT) -> list[tuple[int, int]]:
    """(offset after which a fragment sum is taken, fragment number), as isomd5sum 1.2 does."""
    size = length // (count + 1)
    if size == 0:
        return []
    cuts: list[tuple[int, int]] = []
    previous = 0
    for k in range(1, count + 1):
        start = -(-k * size // BLOCK) * BLOCK  # first block that starts in fragment k or later
        if start >= length:
            break
        fragment = start // size
        if fragment != previous:
            cuts.append((min(start + BLOCK, length), fragment))
            previous = fragment
    return cuts


class MediaDigest:
    """The running MD5 of an image fed in order from byte 0, with the fragment sums."""

    def __init__(self, volume_bytes: int) -> None:
        self.length = volume_bytes - SKIP_SECTORS * SECTOR
        if self.length <= 0:
            raise InputError("the image is too small for a media checksum")
        self.offset = 0
        self._md5 = hashlib.md5()
        self._cuts = fragment_cuts(self.length)
        self._sums: list[str] = []
        self._appdata = (PVD_OFFSET + APPDATA_OFFSET, PVD_OFFSET + APPDATA_OFFSET + APPDATA_SIZE)

    @property
    def done(self) -> bool:
        return self.offset >= self.length

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)[: max(0, self.length - self.offset)]
        while len(view):
            end = self.offset + len(view)
            if self._cuts:
                end = min(end, self._cuts[0][0])
            piece = view[: end - self.offset]
            self._md5.update(self._blank_appdata(piece))
            self.offset = end
            view = view[len(piece):]
            if self._cuts and self.offset == self._cuts[0][0]:
                self._sums.append(self._fragment_sum())
                self._cuts.pop(0)

    def _blank_appdata(self, piece: memoryview) -> bytes | bytearray | memoryview:
        start, stop = self._appdata
        lo, hi = max(start, self.offset), min(stop, self.offset + len(piece))
        if lo >= hi:
            return piece
        data = bytearray(piece)
        data[lo - self.offset:hi - self.offset] = b" " * (hi - lo)
        return data

    def _fragment_sum(self) -> str:
        digest = self._md5.copy().digest()
        per_fragment = FRAGMENT_SUM_SIZE // FRAGMENT_COUNT
        return "".join(format(b, "x")[0] for b in digest[:per_fragment])

    def result(self) -> tuple[str, str]:
        if not self.done:
            raise ValueError(f"digest fed {self.offset} of {self.length} bytes")
        return self._md5.hexdigest(), "".join(self._sums)


def appdata(md5: str, fragment_sums: str, supported: bool = False) -> bytes:
    text = (f"ISO MD5SUM = {md5};SKIPSECTORS = {SKIP_SECTORS};"
            f"RHLISOSTATUS={int(supported)};FRAGMENT SUMS = {fragment_sums};"
            f"FRAGMENT COUNT = {FRAGMENT_COUNT};{NOTICE}")
    return text.encode("ascii").ljust(APPDATA_SIZE, b" ")


def digest_file(fd: int, volume_bytes: int, chunk: int = 1 << 20) -> MediaDigest:
    digest = MediaDigest(volume_bytes)
    while not digest.done:
        want = min(chunk, digest.length - digest.offset)
        data = os.pread(fd, want, digest.offset)
        if len(data) != want:
            raise InputError(f"the image ends at {digest.offset + len(data)} bytes, inside its "
                             f"volume of {volume_bytes} bytes")
        digest.update(data)
    return digest


def write_appdata(fd: int, data: bytes) -> None:
    if len(data) != APPDATA_SIZE:
        raise ValueError("application data must be 512 bytes")
    os.pwrite(fd, data, PVD_OFFSET + APPDATA_OFFSET)


def implant(path: Path, supported: bool = False) -> str:
    """Implant the media checksum into the image at `path` (as `implantisomd5 -f`); the MD5."""
    fd = os.open(path, os.O_RDWR)
    try:
        md5, sums = digest_file(fd, volume_size(fd)).result()
        write_appdata(fd, appdata(md5, sums, supported))
        return md5
    finally:
        os.close(fd)


def read_implanted(path: Path) -> Implanted | None:
    """The checksum implanted in the image, or None if it has none."""
    with path.open("rb") as f:
        f.seek(PVD_OFFSET + APPDATA_OFFSET)
        text = f.read(APPDATA_SIZE).decode("ascii", errors="replace")
    fields = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if "ISO MD5SUM" not in fields or "SKIPSECTORS" not in fields:
        return None
    try:
        return Implanted(md5=fields["ISO MD5SUM"], fragment_sums=fields.get("FRAGMENT SUMS", ""),
                         fragment_count=int(fields.get("FRAGMENT COUNT", "0")),
                         skip_sectors=int(fields["SKIPSECTORS"]),
                         supported=fields.get("RHLISOSTATUS") == "1")
    except ValueError:
        return None


def check(path: Path) -> bool:
    """True when the image's implanted checksum and fragment sums match its content."""
    found = read_implanted(path)
    if found is None or found.skip_sectors != SKIP_SECTORS or \
            found.fragment_count != FRAGMENT_COUNT:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        md5, sums = digest_file(fd, volume_size(fd)).result()
    finally:
        os.close(fd)
    return (md5, sums) == (found.md5, found.fragment_sums)
