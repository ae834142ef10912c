"""The isohybrid system area (MBR + GPT) of a repacked ISO, rebuilt from the base's.

CentOS 7 ISOs are isohybrid images: the first 32 KiB hold an MBR whose boot code loads
isolinux.bin from a USB stick, a partition over the whole image, a partition over
`images/efiboot.img` for UEFI, and a GPT saying the same; a backup GPT sits at the end of the
file. A repack moves files, so every LBA in there must follow. pycdlib 1.22 rewrites this area
itself but gets the GPT partition-array CRCs wrong and misreads the MBR geometry of images over
1 GiB, so ksbuild drops pycdlib's hybrid support and rebuilds the area from the base's bytes:

- the MBR boot code, disk signature, partition types and flags, GPT GUIDs, names and
  attributes are kept byte for byte (nothing random, so the result is reproducible);
- the LBA of isolinux.bin the boot code loads (offset 432), each partition's start and size,
  their CHS fields (when the base's follow the geometry), the GPT's usable range and backup
  location, and both CRCs of both GPT headers are recomputed;
- a partition must be recognisable as "the image" (it starts in the first 64 sectors and ends
  at the volume's end, the file's end or the GPT's last usable sector) or as "the EFI image"
  (it starts and ends where efiboot.img does). Anything else is refused, never guessed.

The output file is padded like the base (to whole cylinders when the base was), and the backup
GPT is written at its very end, after the ISO 9660 volume.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from builder.errors import InputError

SYSTEM_AREA = 16 * 2048
SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
MBR_TABLE = 446
BOOT_LBA_OFFSET = 432  # isohdpfx/isohybrid MBR code: LBA of isolinux.bin in 512-byte sectors


@dataclass(frozen=True)
class Layout:
    """Where the things the system area points at lie, in bytes and 2048-byte blocks."""

    volume_bytes: int  # the ISO 9660 volume (PVD volume space size * 2048)
    file_bytes: int  # the whole file; only meaningful for the base
    boot_lba: int | None  # isolinux.bin, in 2048-byte blocks
    efi_lba: int | None  # images/efiboot.img, in 2048-byte blocks
    efi_bytes: int | None


@dataclass(frozen=True)
class Hybrid:
    head: bytes  # the first 32 KiB
    file_bytes: int  # the padded file size
    backup_gpt: bytes  # written so that it ends at file_bytes; empty without a GPT

    def apply(self, fd: int) -> None:
        """Write the system area, pad the file and write the backup GPT at its end."""
        os.pwrite(fd, self.head, 0)
        os.ftruncate(fd, self.file_bytes)
        if self.backup_gpt:
            os.pwrite(fd, self.backup_gpt, self.file_bytes - len(self.backup_gpt))


def is_hybrid(head: bytes) -> bool:
    return len(head) >= 512 and head[510:512] == b"\x55\xaa" and any(
        _mbr_entry(head, i)[3] for i in range(4))


def _mbr_entry(head: bytes, i: int) -> tuple[int, int, int, int]:
    """(status, type, start, size) of MBR partition i (0-3)."""
    at = MBR_TABLE + 16 * i
    status, ptype = head[at], head[at + 4]
    start, size = struct.unpack_from("<II", head, at + 8)
    return status, ptype, int(start), int(size)


def _chs(lba: int, heads: int, sectors: int) -> bytes:
    cylinder, rest = divmod(lba, heads * sectors)
    head, sector = divmod(rest, sectors)
    if cylinder > 1023:
        cylinder, head, sector = 1023, heads - 1, sectors - 1
    return bytes([head, (sector + 1) | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])


def _geometry(head: bytes) -> tuple[int, int]:
    """(heads, sectors per track) from the end CHS of the MBR's first used entry."""
    for i in range(4):
        at = MBR_TABLE + 16 * i
        if head[at + 12:at + 16] != b"\0\0\0\0":
            heads, sectors = head[at + 5] + 1, head[at + 6] & 0x3F
            if sectors:
                return heads, sectors
    return 64, 32


class _Mover:
    """Maps a base partition (first, last sector) to the output's, or refuses."""

    def __init__(self, base: Layout, new: Layout, ends: list[tuple[int, int]],
                 what: str) -> None:
        self.base, self.new, self.ends, self.what = base, new, ends, what

    def move(self, first: int, last: int, name: str) -> tuple[int, int]:
        b, n = self.base, self.new
        if b.efi_lba is not None and b.efi_bytes is not None and first == b.efi_lba * 4 and \
                last + 1 - first == -(-b.efi_bytes // SECTOR):
            assert n.efi_lba is not None and n.efi_bytes is not None
            return n.efi_lba * 4, n.efi_lba * 4 + -(-n.efi_bytes // SECTOR) - 1
        if first < 64:
            for old_end, new_end in self.ends:
                if last + 1 == old_end:
                    return first, new_end - 1
        raise InputError(
            f"{self.what}: {name} (sectors {first}-{last}) is neither the whole image nor "
            "images/efiboot.img; ksbuild does not know how to move it")


def rebuild(head: bytes, base: Layout, new: Layout, what: str = "base ISO") -> Hybrid:
    """The output's system area, file size and backup GPT for a base system area `head`."""
    if len(head) != SYSTEM_AREA:
        raise ValueError("the system area is 32 KiB")
    if head[2048:2050] == b"PM":
        raise InputError(f"{what}: has an Apple partition map; ksbuild cannot repack it")
    out = bytearray(head)
    heads, sectors = _geometry(head)
    gpt = head[SECTOR:SECTOR + 8] == GPT_SIGNATURE
    entry_sectors = _gpt_entry_sectors(head) if gpt else 0
    backup_bytes = (entry_sectors + 1) * SECTOR if gpt else 0
    align = heads * sectors * SECTOR if base.file_bytes % (heads * sectors * SECTOR) == 0 \
        else 2048
    file_bytes = -(-(new.volume_bytes + backup_bytes) // align) * align
    file_sectors = file_bytes // SECTOR
    _patch_boot_lba(out, base, new)
    mbr_ends = [(base.file_bytes // SECTOR, file_sectors),
                (base.volume_bytes // SECTOR, new.volume_bytes // SECTOR)]
    _patch_mbr(out, _Mover(base, new, mbr_ends, what), heads, sectors, file_sectors)
    backup = b""
    if gpt:
        backup = _patch_gpt(out, base, new, file_sectors, what)
    return Hybrid(bytes(out), file_bytes, backup)


def _patch_boot_lba(out: bytearray, base: Layout, new: Layout) -> None:
    (found,) = struct.unpack_from("<I", out, BOOT_LBA_OFFSET)
    if base.boot_lba is not None and new.boot_lba is not None and found == base.boot_lba * 4:
        struct.pack_into("<I", out, BOOT_LBA_OFFSET, new.boot_lba * 4)


def _patch_mbr(out: bytearray, mover: _Mover, heads: int, sectors: int,
               file_sectors: int) -> None:
    original = bytes(out)
    for i in range(4):
        status, ptype, start, size = _mbr_entry(original, i)
        if size == 0:
            continue
        at = MBR_TABLE + 16 * i
        if ptype == 0xEE:  # a protective MBR covers the disk but its first sector
            new_start, new_last = start, file_sectors - 1
        else:
            new_start, new_last = mover.move(start, start + size - 1, f"MBR partition {i + 1}")
        chs_followed = (original[at + 1:at + 4] == _chs(start, heads, sectors) and
                        original[at + 5:at + 8] == _chs(start + size - 1, heads, sectors))
        if chs_followed:
            out[at + 1:at + 4] = _chs(new_start, heads, sectors)
            out[at + 5:at + 8] = _chs(new_last, heads, sectors)
        struct.pack_into("<II", out, at + 8, new_start, new_last + 1 - new_start)


def _gpt_header(head: bytes) -> dict[str, int]:
    names = ("current", "backup", "first_usable", "last_usable")
    values = struct.unpack_from("<QQQQ", head, SECTOR + 24)
    entries_lba, count, size = struct.unpack_from("<QII", head, SECTOR + 72)
    (header_size,) = struct.unpack_from("<I", head, SECTOR + 12)
    header = {k: int(v) for k, v in zip(names, values)}
    header.update(entries_lba=int(entries_lba), count=int(count), size=int(size),
                  header_size=int(header_size))
    return header


def _gpt_entry_sectors(head: bytes) -> int:
    h = _gpt_header(head)
    return -(-h["count"] * h["size"] // SECTOR)


def _patch_gpt(out: bytearray, base: Layout, new: Layout, file_sectors: int,
               what: str) -> bytes:
    h = _gpt_header(bytes(out))
    array_at, array_len = h["entries_lba"] * SECTOR, h["count"] * h["size"]
    if h["size"] < 128 or array_at + array_len > SYSTEM_AREA or h["header_size"] < 92:
        raise InputError(f"{what}: its GPT does not lie within the first 32 KiB")
    entry_sectors = _gpt_entry_sectors(bytes(out))
    backup_lba = file_sectors - 1
    last_usable = backup_lba - entry_sectors - 1
    gpt_ends = [(h["last_usable"] + 1, last_usable + 1), (h["last_usable"], last_usable),
                (base.volume_bytes // SECTOR, new.volume_bytes // SECTOR),
                (base.file_bytes // SECTOR, file_sectors)]
    mover = _Mover(base, new, gpt_ends, what)
    for i in range(h["count"]):
        at = array_at + i * h["size"]
        if out[at:at + 16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", out, at + 32)
        new_first, new_last = mover.move(int(first), int(last), f"GPT partition {i + 1}")
        struct.pack_into("<QQ", out, at + 32, new_first, new_last)
    array = bytes(out[array_at:array_at + array_len])
    array_crc = zlib.crc32(array)
    primary = _gpt_header_bytes(out, h, current=1, backup=backup_lba, last_usable=last_usable,
                                entries_lba=h["entries_lba"], array_crc=array_crc)
    out[SECTOR:SECTOR + len(primary)] = primary
    backup_array_lba = backup_lba - entry_sectors
    secondary = _gpt_header_bytes(out, h, current=backup_lba, backup=1,
                                  last_usable=last_usable, entries_lba=backup_array_lba,
                                  array_crc=array_crc)
    array_padded = array.ljust(entry_sectors * SECTOR, b"\0")
    return array_padded + secondary.ljust(SECTOR, b"\0")


def _gpt_header_bytes(out: bytearray, h: dict[str, int], *, current: int, backup: int,
                      last_usable: int, entries_lba: int, array_crc: int) -> bytes:
    header = bytearray(out[SECTOR:SECTOR + h["header_size"]])
    struct.pack_into("<QQ", header, 24, current, backup)
    struct.pack_into("<Q", header, 48, last_usable)
    struct.pack_into("<Q", header, 72, entries_lba)
    struct.pack_into("<I", header, 88, array_crc)
    struct.pack_into("<I", header, 16, 0)
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    return bytes(header)
