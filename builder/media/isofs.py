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

from pycdlib.pycdlibexception import PyCdlibException

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
    out = io.BytesIO()
    try:
        iso.get_file_from_iso_fp(out, **where(iso, path))
    except PyCdlibException:
        return None
    return out.getvalue()


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
