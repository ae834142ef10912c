"""Validating a kickstart (issue 16): ms per kickstart for a generated fleet's ks/ and PXE
kickstarts, in one process, with the baselines measured in the same run: a brand-new plain
pykickstart RHEL7 handler per kickstart (what the Validator must agree with), and ksbuild's
Validator with its memos and its section reader switched off (one reused handler, as before
issue 16's validation work).

    python bench/bench_validate.py [--hosts 2000] [--repeat 5]

Target on the 2-core reference machine: a few tenths of a ms per kickstart (10,000 hosts are
validated twice in a full build that must take <= 10 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import pxe_extra, write_fleet_site  # noqa: E402
from builder import el7grammar, kickstart, ksvalidate, site  # noqa: E402


@contextlib.contextmanager
def memos_off() -> Iterator[None]:
    """The Validator as it parses without its memos and its own section reader."""
    from pykickstart.parser import KickstartParser

    def unmemoized(self: Any, known: bool, args: Any, kwargs: dict[str, Any]) -> Any:
        return (self.options.parse_known_args if known else self.options.parse_args)(
            args, **kwargs)

    def parsed(self: Any, dispatch: Callable[[int, list[str]], Any], name: str, line: str,
               lineno: int, args: list[str]) -> Any:
        return dispatch(lineno, args)

    replacements = [(ksvalidate, "_MemoShlex", shlex),
                    (ksvalidate._MemoOptions, "_parse", unmemoized),
                    (ksvalidate._ParseMemo, "dispatch", parsed),
                    (ksvalidate._Parser, "_readSection", KickstartParser._readSection),
                    (el7grammar, "_line_problem", el7grammar._line_problem.__wrapped__)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
    for owner, name, value in replacements:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def plain_validate(text: str, _: str) -> None:
    """A brand-new plain pykickstart RHEL7 handler, warnings as errors, then the EL 7.9
    grammar."""
    from pykickstart.errors import KickstartWarning
    from pykickstart.parser import KickstartParser
    from pykickstart.version import RHEL7, makeVersion

    with warnings.catch_warnings():
        warnings.simplefilter("error", KickstartWarning)
        KickstartParser(makeVersion(RHEL7), followIncludes=False).readKickstartFromString(text)
    assert el7grammar.problem(text) is None


def ms_per_kickstart(validate: Callable[[str, str], None], texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        validate(text, "x.cfg")
    return (time.perf_counter() - start) / len(texts) * 1000


def cold() -> ksvalidate.Validator:
    """A new Validator with the module-wide memos emptied: in a build each kickstart is
    validated once, so a host's own lines (network, hostname) are never found remembered;
    a pass over texts a validator has already seen would find them all."""
    for memo in (ksvalidate._split_words, el7grammar._line_problem):
        if hasattr(memo, "cache_clear"):  # (not while memos_off() has put the plain one)
            memo.cache_clear()
    return ksvalidate.Validator()


def interleaved(texts: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """ms per kickstart of the Validator and of the same with its memos off, each kickstart
    validated once per pass, a pass of each in turn (so both see the same load on a shared
    machine)."""
    on, off = [], []
    for _ in range(repeat):
        with memos_off():
            off.append(ms_per_kickstart(cold().validate, texts))
        on.append(ms_per_kickstart(cold().validate, texts))
    return on, off


def ms_together(pairs: list[tuple[str, str]], repeat: int) -> list[float]:
    """ms per kickstart of each host's ks/ and PXE kickstarts validated together (as a build's
    workers do: Validator.together), a cold validator per pass."""
    passes = []
    for _ in range(repeat):
        validator = cold()
        start = time.perf_counter()
        for plain, pxe in pairs:
            with validator.together():
                validator.validate(plain, "x.cfg")
                validator.validate(pxe, "x.cfg")
        passes.append((time.perf_counter() - start) / (2 * len(pairs)) * 1000)
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ["LANGUAGE"] = "C"  # as render_site's workers run (builder/kickstart.py)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = site.load(write_fleet_site(Path(tmp) / "fleet.yaml", args.hosts))
    variants = {"ks/": list(kickstart.render_site(loaded, jobs=1).values()),
                "PXE": list(kickstart.render_site(loaded, jobs=1, extra=pxe_extra).values())}
    print(f"{args.hosts} hosts, one process, ms per kickstart (best / median of "
          f"{args.repeat} passes):")
    for label, texts in variants.items():
        lines = sum(text.count("\n") for text in texts) / len(texts)
        fresh = ms_per_kickstart(plain_validate, texts[:20])
        on, off = interleaved(texts, args.repeat)
        print(f"  {label:<4} ({lines:.0f} lines): Validator {min(on):.3f} / "
              f"{statistics.median(on):.3f}; baselines: memos off {min(off):.3f} / "
              f"{statistics.median(off):.3f} ({min(off) / min(on):.1f}x), "
              f"a new plain handler {fresh:.1f} ({fresh / min(on):.0f}x)")
    both = ms_together(list(zip(variants["ks/"], variants["PXE"])), args.repeat)
    print(f"  a host's ks/ and PXE together: Validator {min(both):.3f} / "
          f"{statistics.median(both):.3f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
