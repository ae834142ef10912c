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


def read_modes(root: Path) -> dict[str, int]:
    modes_path = root / MODES_FILE
    if not modes_path.exists():
        return {}
    modes: dict[str, int] = {}
    for number, line in enumerate(modes_path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"0?[0-7]{3,4}", parts[1]):
            raise InputError(f"{modes_path}:{number}: expected `<path> <octal mode>`: {line!r}")
        modes[parts[0].strip("/")] = int(parts[1], 8)
    return modes


def _tree(folder: Path, modes: dict[str, int]) -> tuple[dict[str, OverlayDir],
                                                       dict[str, OverlayFile]]:
    dirs: dict[str, OverlayDir] = {}
    files: dict[str, OverlayFile] = {}
    if not folder.is_dir():
        return dirs, files
    for item in sorted(folder.rglob("*")):
        relative = item.relative_to(folder).as_posix()
        if not SAFE_PATH.fullmatch(relative) or ".." in relative.split("/"):
            raise InputError(f"{item}: overlay path {relative!r} may hold only letters, "
                             "digits and ._+@-")
        if item.is_symlink():
            raise InputError(f"{item}: symbolic links are not supported in overlays")
        target = "/" + relative
        if item.is_dir():
            if relative in modes:
                dirs[target] = OverlayDir(target, modes[relative])
            continue
        default = 0o755 if item.stat().st_mode & stat.S_IXUSR else 0o644
        files[target] = OverlayFile(target, modes.get(relative, default), item.read_bytes())
    return dirs, files


class OverlayTree:
    """An overlay root, read once: common/ up front, each host's folder when asked."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.modes = read_modes(root) if root else {}
        self.common = _tree(root / "common", self.modes) if root else ({}, {})

    def for_host(self, hostname: str) -> Overlay:
        """The folders and files the overlay puts on `hostname`, sorted by path."""
        dirs, files = dict(self.common[0]), dict(self.common[1])
        if self.root is not None:
            own_dirs, own_files = _tree(self.root / "hosts" / hostname, self.modes)
            dirs.update(own_dirs)
            files.update(own_files)
        return Overlay(tuple(dirs[k] for k in sorted(dirs)),
                       tuple(files[k] for k in sorted(files)))
