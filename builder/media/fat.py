"""Read and rewrite one existing file inside a FAT12/FAT16 image held in memory.

CentOS 7's `images/efiboot.img` is a small FAT image (made by mkefiboot) with its own copy of
`EFI/BOOT/grub.cfg`. Editing it must work without root, loop mounts or mtools, so this is a
small FAT writer of our own: it finds a file by its long (VFAT) or 8.3 name, case-insensitively
as FAT does, and gives it new content, growing or shrinking its cluster chain in every FAT
copy. Nothing else in the image changes: no other entry, no timestamps (so the result is
reproducible), no layout. Only the content, the size in the directory entry and the chain.
New clusters are the lowest-numbered free ones; the slack of the last cluster is zeroed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from builder.errors import InputError

ENTRY = 32
ATTR_LFN = 0x0F
ATTR_DIR = 0x10
ATTR_VOLUME = 0x08


class FatError(InputError):
    """The image is not a FAT12/16 image we can edit, or lacks room (exit 2: the base is bad)."""


@dataclass(frozen=True)
class _Found:
    offset: int  # byte offset of the 8.3 directory entry in the image
    first_cluster: int
    size: int
    is_dir: bool


class FatImage:
    def __init__(self, data: bytearray, name: str = "FAT image") -> None:
        self.data = data
        self.name = name
        self._parse_boot_sector()

    # -- layout ---------------------------------------------------------------------------------

    def _parse_boot_sector(self) -> None:
        d = self.data
        if len(d) < 512 or d[510:512] != b"\x55\xaa":
            raise FatError(f"{self.name}: not a FAT image (no boot sector signature)")
        fields = [int(v) for v in struct.unpack_from("<HBHBHHBH", d, 11)]
        self.sector, self.per_cluster, reserved, self.fats, root_entries, total16 = fields[:6]
        fat16_size = fields[7]
        total = total16 or int(struct.unpack_from("<I", d, 32)[0])
        if self.sector not in (512, 1024, 2048, 4096) or self.per_cluster == 0 or \
                self.fats == 0 or fat16_size == 0:
            raise FatError(f"{self.name}: not a FAT12/FAT16 image (FAT32 or a damaged boot "
                           "sector); ksbuild edits FAT12/16 images only")
        self.cluster_size = self.sector * self.per_cluster
        self.fat_offset = reserved * self.sector
        self.fat_size = fat16_size * self.sector
        self.root_offset = self.fat_offset + self.fats * self.fat_size
        root_bytes = root_entries * ENTRY
        self.root_size = root_bytes
        root_sectors = -(-root_bytes // self.sector)
        self.data_offset = self.root_offset + root_sectors * self.sector
        self.clusters = (total * self.sector - self.data_offset) // self.cluster_size
        if self.clusters >= 65525:
            raise FatError(f"{self.name}: FAT32 image; ksbuild edits FAT12/16 images only")
        self.fat12 = self.clusters < 4085
        self.eoc = 0xFFF if self.fat12 else 0xFFFF
        if self.data_offset + self.clusters * self.cluster_size > len(d):
            raise FatError(f"{self.name}: the image is shorter than its boot sector says")

    # -- the allocation table -------------------------------------------------------------------

    def _get(self, n: int) -> int:
        if self.fat12:
            word = int(struct.unpack_from("<H", self.data, self.fat_offset + n + n // 2)[0])
            return word >> 4 if n & 1 else word & 0xFFF
        return int(struct.unpack_from("<H", self.data, self.fat_offset + 2 * n)[0])

    def _set(self, n: int, value: int) -> None:
        for copy in range(self.fats):
            base = self.fat_offset + copy * self.fat_size
            if self.fat12:
                at = base + n + n // 2
                (word,) = struct.unpack_from("<H", self.data, at)
                word = (word & 0x000F) | (value << 4) if n & 1 else (word & 0xF000) | value
                struct.pack_into("<H", self.data, at, word)
            else:
                struct.pack_into("<H", self.data, base + 2 * n, value)

    def _is_end(self, value: int) -> bool:
        return value >= (0xFF8 if self.fat12 else 0xFFF8)

    def chain(self, first: int) -> list[int]:
        chain: list[int] = []
        n = first
        while 2 <= n < self.clusters + 2:
            chain.append(n)
            if len(chain) > self.clusters:
                raise FatError(f"{self.name}: a cluster chain loops")
            n = self._get(n)
            if self._is_end(n):
                return chain
        if n == 0 and not chain:
            return chain
        raise FatError(f"{self.name}: a cluster chain points outside the image ({n:#x})")

    def free_clusters(self) -> list[int]:
        return [n for n in range(2, self.clusters + 2) if self._get(n) == 0]

    def _cluster_offset(self, n: int) -> int:
        return self.data_offset + (n - 2) * self.cluster_size

    # -- directories ----------------------------------------------------------------------------

    def _dir_regions(self, first_cluster: int | None) -> list[tuple[int, int]]:
        if first_cluster is None:
            return [(self.root_offset, self.root_size)]
        return [(self._cluster_offset(n), self.cluster_size) for n in self.chain(first_cluster)]

    def _entries(self, first_cluster: int | None) -> list[tuple[str, str, _Found]]:
        """(long name, short name, entry) for each file and folder of a directory."""
        found: list[tuple[str, str, _Found]] = []
        lfn: dict[int, str] = {}
        for start, size in self._dir_regions(first_cluster):
            for at in range(start, start + size, ENTRY):
                raw = bytes(self.data[at:at + ENTRY])
                if raw[0] == 0:
                    return found
                if raw[0] == 0xE5:
                    lfn = {}
                    continue
                if raw[11] == ATTR_LFN:
                    lfn[raw[0] & 0x1F] = _lfn_part(raw)
                    continue
                if raw[11] & ATTR_VOLUME:
                    lfn = {}
                    continue
                long_name = "".join(lfn[k] for k in sorted(lfn))
                lfn = {}
                (cluster,) = struct.unpack_from("<H", raw, 26)
                (size_,) = struct.unpack_from("<I", raw, 28)
                found.append((long_name, _short_name(raw),
                              _Found(at, int(cluster), int(size_), bool(raw[11] & ATTR_DIR))))
        return found

    def find(self, path: str) -> _Found:
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise FatError(f"{self.name}: no file name given")
        where: int | None = None
        for i, part in enumerate(parts):
            match = next((e for long, short, e in self._entries(where)
                          if part.casefold() in (long.casefold(), short.casefold())), None)
            if match is None:
                raise FatError(f"{self.name}: no {'/'.join(parts[:i + 1])} in the image")
            if i < len(parts) - 1:
                if not match.is_dir:
                    raise FatError(f"{self.name}: {'/'.join(parts[:i + 1])} is not a folder")
                where = match.first_cluster or None
            elif match.is_dir:
                raise FatError(f"{self.name}: {path} is a folder")
            else:
                return match
        raise AssertionError("unreachable")

    # -- files ----------------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        entry = self.find(path)
        out = bytearray()
        for n in self.chain(entry.first_cluster) if entry.first_cluster else []:
            at = self._cluster_offset(n)
            out += self.data[at:at + self.cluster_size]
        if len(out) < entry.size:
            raise FatError(f"{self.name}: {path} is shorter than its directory entry says")
        return bytes(out[:entry.size])

    def write(self, path: str, content: bytes) -> None:
        entry = self.find(path)
        chain = self.chain(entry.first_cluster) if entry.first_cluster else []
        need = -(-len(content) // self.cluster_size)
        if need > len(chain):
            free = self.free_clusters()
            missing = need - len(chain)
            if missing > len(free):
                raise FatError(
                    f"{self.name}: no room for the new {path} ({len(content)} bytes): it needs "
                    f"{missing} more cluster(s) of {self.cluster_size} bytes and the image has "
                    f"{len(free)} free")
            chain = chain + free[:missing]
        for n in chain[need:]:
            self._set(n, 0)
        chain = chain[:need]
        for this, following in zip(chain, chain[1:]):
            self._set(this, following)
        if chain:
            self._set(chain[-1], self.eoc)
        for i, n in enumerate(chain):
            piece = content[i * self.cluster_size:(i + 1) * self.cluster_size]
            at = self._cluster_offset(n)
            self.data[at:at + self.cluster_size] = piece.ljust(self.cluster_size, b"\0")
        struct.pack_into("<H", self.data, entry.offset + 26, chain[0] if chain else 0)
        struct.pack_into("<I", self.data, entry.offset + 28, len(content))


def _lfn_part(raw: bytes) -> str:
    chars = raw[1:11] + raw[14:26] + raw[28:32]
    text = chars.decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0].rstrip("\uffff")


def _short_name(raw: bytes) -> str:
    base = raw[0:8].decode("ascii", errors="replace").rstrip()
    ext = raw[8:11].decode("ascii", errors="replace").rstrip()
    if base.startswith("\x05"):
        base = "\xe5" + base[1:]
    return f"{base}.{ext}" if ext else base
