"""The fleet status page `ksbuild serve` answers at /status: one self-contained HTML file
(kickstarts/pxe/status.html, inline script and style, nothing from the internet) that polls
/status.json for what changed (builder/pxe/events.py computes it)."""

from __future__ import annotations

from functools import lru_cache

from builder.errors import KsbuildError
from builder.kickstart import template_dir

PAGE = "pxe/status.html"


@lru_cache(maxsize=1)
def page() -> bytes:
    path = template_dir() / PAGE
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KsbuildError(f"status page {path}: {exc.strerror or exc}") from None
