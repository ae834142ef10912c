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


def exists(iso: Any, path: str) -> bool:
    try:
        iso.get_record(**where(iso, path))
    except PyCdlibException:
        return False
    return True


@dataclass
class Edit:
    """Content given to pycdlib must stay readable until the image is written."""

    keep: list[io.BytesIO] = field(default_factory=list)

    def replace(self, iso: Any, path: str, data: bytes) -> None:
        buffer = io.BytesIO(data)
        self.keep.append(buffer)
        iso.update_file_contents_fp(buffer, len(data), **where(iso, path))

    def add(self, iso: Any, path: str, data: bytes, mode: int) -> None:
        if exists(iso, path):
            self.replace(iso, path, data)
            return
        parent, name = path.rsplit("/", 1)
        iso_parent = ensure_dir(iso, parent)
        iso_name = _iso9660_name(iso, iso_parent, name, directory=False)
        buffer = io.BytesIO(data)
        self.keep.append(buffer)
        iso.add_fp(buffer, len(data), iso_path=f"{iso_parent.rstrip('/')}/{iso_name}",
                   rr_name=name if iso.has_rock_ridge() else None,
                   joliet_path=_joliet(iso, path),
                   file_mode=mode if iso.has_rock_ridge() else None)


def _joliet(iso: Any, path: str) -> str | None:
    # Joliet names hold at most 64 characters; Linux reads Rock Ridge names anyway.
    fits = all(len(part) <= 64 for part in path.split("/"))
    return path if iso.has_joliet() and fits else None


def _iso_path_of(iso: Any, path: str) -> str:
    record = iso.get_record(**where(iso, path))
    return str(iso.full_path_from_dirrecord(record))


def ensure_dir(iso: Any, path: str) -> str:
    """The ISO 9660 path of folder `path` (a real name), made (with parents) if missing."""
    if path in ("", "/"):
        return "/"
    if exists(iso, path):
        return _iso_path_of(iso, path)
    parent, name = path.rsplit("/", 1)
    iso_parent = ensure_dir(iso, parent)
    iso_path = f"{iso_parent.rstrip('/')}/{_iso9660_name(iso, iso_parent, name, directory=True)}"
    iso.add_directory(iso_path=iso_path,
                      rr_name=name if iso.has_rock_ridge() else None,
                      joliet_path=_joliet(iso, path),
                      file_mode=0o040555 if iso.has_rock_ridge() else None)
    return iso_path


def _iso9660_name(iso: Any, iso_parent: str, name: str, directory: bool) -> str:
    """A level-1 ISO 9660 name (8.3, A-Z0-9_) for `name`, unique in its folder."""
    taken = {child.file_identifier().decode("ascii", "replace").split(";")[0]
             for child in iso.list_children(iso_path=iso_parent)}
    stem, dot, ext = name.upper().rpartition(".") if not directory else ("", "", name.upper())
    if not dot:
        stem, ext = ext, ""
    stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:8] or "_"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext)[:3]
    for n in range(10000):
        base = stem if n == 0 else f"{stem[:8 - len(str(n)) - 1]}_{n}"
        candidate = f"{base}.{ext}" if ext else base
        if candidate.rstrip(".") not in taken and candidate not in taken:
            return candidate if directory else f"{candidate};1"
    raise InputError(f"{iso_parent}: too many files named like {name}")


def apply_overlay(iso: Any, edit: Edit, folder: Path) -> None:
    """Put every file under `folder` onto the image at its path (replacing what is there)."""
    for item in sorted(folder.rglob("*")):
        relative = item.relative_to(folder).as_posix()
        if item.is_symlink():
            raise InputError(f"{item}: symbolic links are not supported in overlays")
        if not OVERLAY_NAME.fullmatch(relative):
            raise InputError(f"{item}: overlay path {relative!r} may hold only letters, digits "
                             "and ._+@-")
        if "/" + relative == KS_PATH:
            raise InputError(f"{item}: ks.cfg is the kickstart ksbuild writes; rename the file")
        if item.is_dir():
            ensure_dir(iso, "/" + relative)
        else:
            mode = 0o100555 if os.access(item, os.X_OK) else 0o100444
            edit.add(iso, "/" + relative, item.read_bytes(), mode)
