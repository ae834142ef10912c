"""Where ksbuild keeps what it fetched and what only saves time, for the user (not for an
output folder): a module of its own so that `ksbuild iso` finds its compiled templates there
without importing the downloader (~4 ms)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/ksbuild`, or `~/.cache/ksbuild` (the XDG default)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "ksbuild"
