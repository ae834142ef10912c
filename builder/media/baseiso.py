"""The base ISO as a file: the checks before pycdlib sees it (one clear line each), and a
few of its files read without pycdlib where the quick reader can (isofs.quick_read).

Apart from builder/media/iso.py (the repack: pycdlib, the boot menus, the hybrid MBR, the
media checksum) so that a build that checks its base and reads a few files of it (its
preflight, the PXE tree's BaseIso, the Secure Boot check) loads none of that: ~30 ms of
every `ksbuild build` with work to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from builder.errors import InputError
from builder.media import isofs

SECTOR = 2048
PVD = 16 * SECTOR


def open_base_file(base: Path) -> BinaryIO:
    """The base opened for reading, if it is a regular file. O_NONBLOCK: a FIFO given as the
    base opens at once (and is refused) instead of waiting for a writer forever."""
    try:
        fd = os.open(base, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{base}: no such file") from None
    except OSError as exc:
        raise InputError(f"{base}: cannot read: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "is a folder" if stat.S_ISDIR(mode) else "is not a regular file"
        raise InputError(f"{base}: {what}, not an ISO image")
    return open(fd, "rb")


def read_base_head(base: Path) -> tuple[bytes, int]:
    """The first 17 sectors of the base (system area + PVD) and its size; InputError if it is
    not an ISO 9660 image, or is shorter than its primary volume descriptor says (a cut
    download: pycdlib would fail deep inside with a struct.error)."""
    try:
        with open_base_file(base) as f:
            head = f.read(PVD + SECTOR)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise InputError(f"{base}: cannot read: {exc.strerror}") from None
    if len(head) < PVD + SECTOR or head[PVD:PVD + 6] != b"\x01CD001":
        raise InputError(f"{base}: not an ISO 9660 image (no primary volume descriptor)")
    volume = volume_size(head[PVD:PVD + SECTOR])
    if volume > size:
        raise InputError(f"{base}: truncated: the image is {size} bytes, its volume "
                         f"descriptor says {volume} (an interrupted download?)")
    return head, size


def volume_size(pvd_sector: bytes) -> int:
    """Bytes in the volume: the PVD's volume space size (offset 80, both-endian 32-bit) times
    its logical block size (offset 128, both-endian 16-bit); ECMA-119 8.4.8, 8.4.12."""
    blocks = int.from_bytes(pvd_sector[80:84], "little")
    block_size = int.from_bytes(pvd_sector[128:130], "little")
    return blocks * block_size


def read_base_files(base: Path, paths: list[str]) -> dict[str, bytes | None]:
    """path -> bytes (None: not on the image) of a few files of the base, without pycdlib's
    parse of the whole image where the quick reader can (isofs.quick_read); the same
    InputError as open_base for a file that is not an ISO image."""
    read_base_head(base)
    with open_base_file(base) as handle:
        quick = isofs.quick_read(handle.fileno(), paths)
    if quick is not None:
        return quick
    from builder.media.iso import open_base  # pycdlib: only where quick_read cannot answer

    iso, handle, _, _ = open_base(base)
    try:
        return {path: isofs.read(iso, path) for path in paths}
    finally:
        iso.close()
        handle.close()
