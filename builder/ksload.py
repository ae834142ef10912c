"""pykickstart without `requests` until a kickstart asks for a URL.

pykickstart.parser and pykickstart.version import load_to_str from pykickstart.load, which
imports requests (and with it urllib3, http.client, ssl, charset_normalizer, idna): ~40 ms
of every `ksbuild iso` and `ksbuild build` that validates a kickstart, for %include and
%ksappend of a URL, which ksbuild's kickstarts never use (issue 16). `install()` puts a
stand-in under that name before pykickstart is imported: its functions load the real module
(from pykickstart's own file, under its own name) on their first call and hand over to it, so
a kickstart that loads a file or a URL gets exactly pykickstart's behaviour and messages.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

NAME = "pykickstart.load"


class _StandIn(types.ModuleType):
    """pykickstart.load until first used; then every attribute is the real module's."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system asks for __path__ and the like
            raise AttributeError(name)
        return getattr(_real(), name)


def _real() -> types.ModuleType:
    """The real pykickstart.load, loaded once from pykickstart's folder."""
    module = sys.modules.get(NAME)
    if module is not None and not isinstance(module, _StandIn):
        return module
    import pykickstart

    spec = importlib.machinery.PathFinder.find_spec(NAME, list(pykickstart.__path__))
    assert spec is not None and spec.loader is not None, NAME
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    sys.modules[NAME] = real
    pykickstart.load = real
    return real


def load_to_str(location: str) -> str:
    return str(_real().load_to_str(location))


def load_to_file(location: str, destination: str) -> str:
    return str(_real().load_to_file(location, destination))


def install() -> None:
    """The stand-in, unless pykickstart.load is loaded already (then nothing is saved)."""
    if NAME in sys.modules:
        return
    module = _StandIn(NAME, _real.__doc__)
    module.load_to_str = load_to_str  # type: ignore[attr-defined]
    module.load_to_file = load_to_file  # type: ignore[attr-defined]
    sys.modules[NAME] = module
