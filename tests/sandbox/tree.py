"""A tree's state, to compare before and after (idempotence, unexplained changes)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

# path (relative, /-separated) -> (kind, mode, content hash or link target)
Tree = dict[str, tuple[str, int, str]]


def snapshot(target: Path, leave_out: Iterable[str] = ()) -> Tree:
    """path -> (kind, mode, content hash or link target) for the whole tree, but for the
    sandbox's own files (/.sandbox, /dev) and the absolute paths in `leave_out`."""
    skip = {path.lstrip("/") for path in leave_out}
    tree: Tree = {}
    for path in sorted(target.rglob("*")):
        relative = path.relative_to(target).as_posix()
        if relative.split("/")[0] in (".sandbox", "dev") or relative in skip:
            continue
        info = path.lstat()
        if path.is_symlink():
            tree[relative] = ("link", 0, str(path.readlink()))
        elif path.is_dir():
            tree[relative] = ("dir", info.st_mode & 0o7777, "")
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            tree[relative] = ("file", info.st_mode & 0o7777, digest)
    return tree
