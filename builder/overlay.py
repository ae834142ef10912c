"""Overlay trees: files that ksbuild writes onto the installed hosts.

Layout of the overlay root (the site's `overlays:` folder):

    common/                 every host; the path below it is the path on the host
    hosts/<hostname>/       one host only; a file here wins over the same path in common/
    iso/                    onto the install ISO (see builder/media), not onto hosts
    .ksbuild-modes          optional: lines `<path on the host, without the leading /> <octal mode>`

A file's mode is 0755 when it is executable in the tree, else 0644, unless .ksbuild-modes
names it (e.g. `root/.ssh/authorized_keys 0600`, or a folder: `root/.ssh 0700`). Git keeps
only the executable bit, so the modes file is how a tree in git carries 0600 or 0700.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError

# Paths become shell words (quoted, but kept plain so a listing of the kickstart reads well).
SAFE_PATH = re.compile(r"[A-Za-z0-9._+@-]+(?:/[A-Za-z0-9._+@-]+)*")
MODES_FILE = ".ksbuild-modes"


@dataclass(frozen=True)
class OverlayFile:
    path: str  # absolute path on the installed host
    mode: int
    content: bytes


@dataclass(frozen=True)
class OverlayDir:
    path: str
    mode: int


@dataclass(frozen=True)
class Overlay:
    dirs: tuple[OverlayDir, ...]  # folders whose mode is set explicitly
    files: tuple[OverlayFile, ...]


def _kind(path: Path) -> str:
    """"file", "folder" or "missing"; InputError for a symlink (it could reach anything on
    the build machine: a private key would land on every host) and for a FIFO, socket or
    device (reading one blocks or never ends). lstat only: nothing is opened."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        raise InputError(f"{path}: symbolic links are not supported in overlays")
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    raise InputError(f"{path}: not a regular file or folder; overlays hold only those")


def entries(folder: Path, root: Path) -> list[tuple[Path, str, bool]]:
    """(path, path relative to `folder`, is a folder) of everything below `folder`, sorted;
    every level from `root` (exclusive) down to each entry is checked by _kind, so neither a
    symlinked `hosts/<name>` nor one deep inside reaches outside the tree. [] if `folder`
    does not exist."""
    level = root
    for part in folder.relative_to(root).parts:
        level = level / part
        kind = _kind(level)
        if kind == "missing":
            return []
        if kind != "folder":
            raise InputError(f"{level}: not a folder")
    found = []
    for item in sorted(folder.rglob("*")):
        kind = _kind(item)
        if kind != "missing":
            found.append((item, item.relative_to(folder).as_posix(), kind == "folder"))
    return found


def read_file(path: Path) -> bytes:
    """The bytes of a regular file, opened so that a symlink or FIFO swapped in after the
    check fails instead of being followed or blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: not a regular file or folder; overlays hold only those")
        return handle.read()


def read_modes(root: Path) -> dict[str, int]:
    modes_path = root / MODES_FILE
    if _kind(modes_path) == "missing":
        return {}
    if _kind(modes_path) != "file":
        raise InputError(f"{modes_path}: not a regular file")
    data = read_file(modes_path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{modes_path}:{bad_line}: not UTF-8 text") from None
    modes: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"0?[0-7]{3,4}", parts[1]):
            raise InputError(f"{modes_path}:{number}: expected `<path> <octal mode>`: {line!r}")
        modes[parts[0].strip("/")] = int(parts[1], 8)
    return modes


def _tree(folder: Path, root: Path, modes: dict[str, int]) -> tuple[dict[str, OverlayDir],
                                                       dict[str, OverlayFile]]:
    dirs: dict[str, OverlayDir] = {}
    files: dict[str, OverlayFile] = {}
    for item, relative, is_folder in entries(folder, root):
        if not SAFE_PATH.fullmatch(relative) or ".." in relative.split("/"):
            raise InputError(f"{item}: overlay path {relative!r} may hold only letters, "
                             "digits and ._+@-")
        target = "/" + relative
        if is_folder:
            if relative in modes:
                dirs[target] = OverlayDir(target, modes[relative])
            continue
        default = 0o755 if item.stat().st_mode & stat.S_IXUSR else 0o644
        files[target] = OverlayFile(target, modes.get(relative, default), read_file(item))
    return dirs, files


class OverlayTree:
    """An overlay root, read once: common/ up front, each host's folder when asked."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.modes = read_modes(root) if root else {}
        self.common = _tree(root / "common", root, self.modes) if root else ({}, {})

    def own_folders(self) -> frozenset[str] | None:
        """The names in hosts/, lowercased: a host not named there has the overlay that
        `without_own` gives (for_host finds no folder of its own). None where hosts/ is not
        a folder that can be listed: for_host then tells each host what is wrong."""
        if self.root is None:
            return frozenset()
        try:
            if not stat.S_ISDIR((self.root / "hosts").lstat().st_mode):
                return None
            return frozenset(name.lower() for name in os.listdir(self.root / "hosts"))
        except FileNotFoundError:
            return frozenset()
        except OSError:
            return None

    def for_host(self, hostname: str) -> Overlay:
        """The folders and files the overlay puts on `hostname`, sorted by path."""
        dirs, files = dict(self.common[0]), dict(self.common[1])
        if self.root is not None:
            own_dirs, own_files = _tree(self.root / "hosts" / hostname, self.root,
                                        self.modes)
            dirs.update(own_dirs)
            files.update(own_files)
        return _sorted(dirs, files)

    def without_own(self) -> Overlay:
        """The overlay of a host with no folder of its own (common/ alone)."""
        return _sorted(*self.common)


def _sorted(dirs: dict[str, OverlayDir], files: dict[str, OverlayFile]) -> Overlay:
    return Overlay(tuple(dirs[k] for k in sorted(dirs)), tuple(files[k] for k in sorted(files)))
