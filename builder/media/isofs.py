"""Files inside an opened image (pycdlib): read, replace, add, with the names each view needs.

Paths are the real names ("/isolinux/isolinux.cfg"), looked up through Rock Ridge, else
Joliet, else plain ISO 9660. New files and folders get a level-1 ISO 9660 name (8.3,
A-Z0-9_, unique in their folder), their real name in Rock Ridge and, when it fits in 64
characters, in Joliet.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import overlay
from builder.errors import InputError

KS_PATH = "/ks.cfg"
OVERLAY_NAME = re.compile(r"[A-Za-z0-9._+@-]+(?:/[A-Za-z0-9._+@-]+)*")


def where(iso: Any, path: str) -> dict[str, str]:
    if iso.has_rock_ridge():
        return {"rr_path": path}
    if iso.has_joliet():
        return {"joliet_path": path}
    return {"iso_path": path.upper() + ";1"}


def read(iso: Any, path: str) -> bytes | None:
    # Here, not at the top: a build that only quick_reads needs no pycdlib (~7 ms to import).
    from pycdlib.pycdlibexception import PyCdlibException

    out = io.BytesIO()
    try:
        iso.get_file_from_iso_fp(out, **where(iso, path))
    except PyCdlibException:
        return None
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# A few files read without pycdlib, which parses every directory record of the image when it
# opens one (0.15 s for a DVD's ~4,000 packages, more for Everything): enough for a check that
# reads two files. Directory records as ECMA-119 9.1 lays them out, names from Rock Ridge NM
# entries (RRIP 4.1.4) as isofs.read looks them up.

class _Unsure(Exception):
    """The image uses something this reader leaves to pycdlib."""


def quick_read(fd: int, paths: list[str]) -> dict[str, bytes | None] | None:
    """path -> its bytes (None: no such file), for real paths ("/EFI/BOOT/BOOTX64.EFI") on a
    Rock Ridge image; None where pycdlib must answer instead (no Rock Ridge, a continuation
    area, a multi-extent file, a damaged record...)."""
    try:
        pvd = os.pread(fd, 2048, 16 * 2048)
        block = int.from_bytes(pvd[128:130], "little")
        root = _record(pvd[156:190], block)
        first = os.pread(fd, 255, root[0])  # the root's ".": SUSP's SP entry, if any
        if first[32] != 1 or first[34:36] == b"SP" and first[40]:
            raise _Unsure  # SUSP fields after skipped bytes (SUSP 5.3): rare, left to pycdlib
        found: dict[str, bytes | None] = {}
        for path in paths:
            entry: tuple[int, int, bool] | None = root
            for name in path.strip("/").split("/"):
                entry = _child(fd, entry, name, block) if entry is not None else None
            found[path] = None if entry is None or entry[2] else os.pread(fd, entry[1],
                                                                          entry[0])
        return found
    except (_Unsure, ValueError, IndexError, OSError):
        return None


def _record(raw: bytes, block: int) -> tuple[int, int, bool]:
    """(byte offset, length, is a folder) of a directory record."""
    if raw[25] & 0x80 or raw[1]:  # multi-extent, extended attributes
        raise _Unsure
    return (int.from_bytes(raw[2:6], "little") * block, int.from_bytes(raw[10:14], "little"),
            bool(raw[25] & 0x02))


def _child(fd: int, folder: tuple[int, int, bool], name: str,
           block: int) -> tuple[int, int, bool] | None:
    start, length, is_dir = folder
    if not is_dir:
        return None
    data = os.pread(fd, length, start)
    at = 0
    while at < len(data):
        size = data[at]
        if size == 0:  # records do not cross a sector: the rest of this one is padding
            at = (at // 2048 + 1) * 2048
            continue
        raw = data[at:at + size]
        at += size
        name_len = raw[32]
        if name_len == 1 and raw[33] in (0, 1):  # "." and ".."
            continue
        if _rock_ridge_name(raw[33 + name_len + (1 - name_len % 2):]) == name:
            return _record(raw, block)
    return None


def _rock_ridge_name(system_use: bytes) -> str:
    """The NM entries' name; _Unsure without one or with a continuation area (CE)."""
    name = b""
    at = 0
    while at + 4 <= len(system_use):
        signature, size = system_use[at:at + 2], system_use[at + 2]
        if size < 4:
            break
        if signature == b"CE":
            raise _Unsure
        if signature == b"NM":
            if system_use[at + 4] & 0x06:  # "." or "..": not a real name
                raise _Unsure
            name += system_use[at + 5:at + size]
        if signature == b"ST":
            break
        at += size
    if not name:
        raise _Unsure
    return name.decode("utf-8", errors="surrogateescape")


@dataclass
class _Folder:
    iso_path: str  # its ISO 9660 path
    children: dict[str, tuple[str, bool]]  # real name -> (ISO 9660 name, is a folder)
    next_suffix: dict[str, int] = field(default_factory=dict)  # mangled name -> next number
    taken: set[str] = field(default_factory=set)  # ISO 9660 names, without ";1"

    def __post_init__(self) -> None:
        self.taken = {iso_name.split(";")[0] for iso_name, _ in self.children.values()}

    def put(self, name: str, iso_name: str, is_dir: bool) -> None:
        self.children[name] = (iso_name, is_dir)
        self.taken.add(iso_name.split(";")[0])


@dataclass
class Edit:
    """Changes to an opened image. Folders are listed once and the listing kept up to date:
    asking pycdlib about a path after a change re-lays the whole image each time, which made
    a per-site ISO of a few thousand hosts take minutes. The content handed to pycdlib is
    kept here, since it must stay readable until the image is written."""

    iso: Any
    keep: list[io.BytesIO] = field(default_factory=list)
    folders: dict[str, _Folder] = field(default_factory=dict)

    def replace(self, path: str, data: bytes) -> None:
        buffer = io.BytesIO(data)
        self.keep.append(buffer)
        self.iso.update_file_contents_fp(buffer, len(data), **where(self.iso, path))

    def add(self, path: str, data: bytes, mode: int) -> None:
        """Put `data` at `path`: replace the file, or add it (and its folders)."""
        parent, name = path.rsplit("/", 1)
        folder = self.folder(parent or "/", create=True)
        if self._find(folder, name) is not None:
            self.replace(path, data)
            return
        iso_name = self._new_iso_name(folder, name, directory=False)
        buffer = io.BytesIO(data)
        self.keep.append(buffer)
        self.iso.add_fp(buffer, len(data), iso_path=f"{folder.iso_path.rstrip('/')}/{iso_name}",
                        rr_name=name if self.iso.has_rock_ridge() else None,
                        joliet_path=_joliet(self.iso, path),
                        file_mode=mode if self.iso.has_rock_ridge() else None)
        folder.put(name, iso_name, False)

    def folder(self, path: str, create: bool = False) -> _Folder:
        """The listing of folder `path` (a real name); made, with its parents, if `create`."""
        path = "/" + path.strip("/")
        if path in self.folders:
            return self.folders[path]
        if path == "/":
            listing = _Folder("/", self._list("/"))
        else:
            parent_path, name = path.rsplit("/", 1)
            parent = self.folder(parent_path or "/", create)
            found = self._find(parent, name)
            if found is None and not create:
                raise InputError(f"no folder {path} in the image")
            if found is None:
                iso_name = self._new_iso_name(parent, name, directory=True)
                iso_path = f"{parent.iso_path.rstrip('/')}/{iso_name}"
                self.iso.add_directory(iso_path=iso_path,
                                       rr_name=name if self.iso.has_rock_ridge() else None,
                                       joliet_path=_joliet(self.iso, path),
                                       file_mode=0o040555 if self.iso.has_rock_ridge() else None)
                parent.put(name, iso_name, True)
                listing = _Folder(iso_path, {})
            elif not found[1]:
                raise InputError(f"{path} is a file in the image, not a folder")
            else:
                listing = _Folder(f"{parent.iso_path.rstrip('/')}/{found[0]}",
                                  self._list(f"{parent.iso_path.rstrip('/')}/{found[0]}"))
        self.folders[path] = listing
        return listing

    def _list(self, iso_path: str) -> dict[str, tuple[str, bool]]:
        children: dict[str, tuple[str, bool]] = {}
        for child in self.iso.list_children(iso_path=iso_path):
            if child.is_dot() or child.is_dotdot():
                continue
            iso_name = child.file_identifier().decode("ascii", "replace")
            real = iso_name.split(";")[0]
            if self.iso.has_rock_ridge() and child.rock_ridge is not None:
                real = child.rock_ridge.name().decode("utf-8", "replace")
            children[real] = (iso_name, child.is_dir())
        return children

    def _find(self, folder: _Folder, name: str) -> tuple[str, bool] | None:
        if name in folder.children:
            return folder.children[name]
        if not self.iso.has_rock_ridge():  # plain ISO 9660 names: compare as the ISO would
            for real, entry in folder.children.items():
                if real.upper() == name.upper():
                    return entry
        return None

    def _new_iso_name(self, folder: _Folder, name: str, directory: bool) -> str:
        """A level-1 ISO 9660 name (8.3, A-Z0-9_) for `name`, unique in `folder`."""
        upper = name.upper()
        stem, dot, ext = ("", "", upper) if directory else upper.rpartition(".")
        if not dot:
            stem, ext = ext, ""
        stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:8] or "_"
        ext = re.sub(r"[^A-Z0-9_]", "_", ext)[:3]
        key = f"{stem}.{ext}"
        n = folder.next_suffix.get(key, 0)
        while True:
            base = stem if n == 0 else f"{stem[:8 - len(str(n)) - 1]}_{n}"
            candidate = f"{base}.{ext}" if ext else base
            n += 1
            if candidate not in folder.taken:
                folder.next_suffix[key] = n
                return candidate if directory else f"{candidate};1"


def _joliet(iso: Any, path: str) -> str | None:
    # Joliet names hold at most 64 characters; Linux reads Rock Ridge names anyway.
    fits = all(len(part) <= 64 for part in path.split("/"))
    return path if iso.has_joliet() and fits else None


def apply_overlay(edit: Edit, folder: Path) -> None:
    """Put every file under `folder` onto the image at its path (replacing what is there)."""
    for item, relative, is_folder in overlay.entries(folder, folder.parent):
        if not OVERLAY_NAME.fullmatch(relative):
            raise InputError(f"{item}: overlay path {relative!r} may hold only letters, digits "
                             "and ._+@-")
        if "/" + relative == KS_PATH:
            raise InputError(f"{item}: ks.cfg is the kickstart ksbuild writes; rename the file")
        if is_folder:
            edit.folder("/" + relative, create=True)
        else:
            mode = 0o100555 if os.access(item, os.X_OK) else 0o100444
            edit.add("/" + relative, overlay.read_file(item), mode)
