"""What lets a rebuild skip parsing the hosts whose text did not change (issue 16): the site
text split without YAML into a frame and one chunk per host, and the per-host cache file.

The split is used only where it cannot differ from what the YAML parser sees: a block
sequence under a top-level `hosts:` key, in a text without anchors, aliases, tags or merge
keys (any `&`, `*`, `!` or `<<` disqualifies it). Anything else loads the whole document.
A chunk that changed is composed on its own by the loader (builder/site.py), which checks it
is exactly one item of a sequence; anything unexpected falls back to the full load too.

The cache maps sha256(chunk text) to the host's model and its fleet-wide keys (names, MACs,
addresses), valid only for the code that wrote it (`code_digest`: ksbuild's version and
source, Python's version) and the frame text it was made under (`frame_digest`). It lives in
two files: a base written after a full load, and a small delta with the hosts parsed since,
so a one-host change does not rewrite every host's model. Either file unreadable, truncated
or from other code: it is ignored, and the load is a full one.
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import io
import ipaddress
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import builder
from builder import output
from builder.output import remove, write_bytes

FORMAT = 1
# What could change how the text around it is read: anchors, aliases, tags, merge keys.
UNSAFE = ("&", "*", "!", "<<")
HOSTS_KEY = re.compile(r"hosts:[ \t]*(?:#.*)?\r?")
ITEM = re.compile(r"( *)-(?: |\r?$)")


@dataclass(frozen=True)
class Split:
    """The site text as a frame and host chunks; `frame` keeps every line (the hosts block's
    lines blank), so what YAML reads of it carries the lines of the real file."""

    frame: str
    frame_digest: str  # sha256 of the frame's text, without the hosts block's place
    hosts_line: int  # the `hosts:` key's line, 1-based
    starts: tuple[int, ...]  # each chunk's first line, 0-based
    end: int  # the line after the last chunk, 0-based
    chunks: tuple[str, ...]  # each host's text, whole lines


def _blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def split(text: str) -> Split | None:
    """The frame and the host chunks, or None where the split could be ambiguous."""
    if any(mark in text for mark in UNSAFE):
        return None
    lines = text.split("\n")
    keys = [n for n, line in enumerate(lines) if line.startswith("hosts:")]
    if len(keys) != 1 or not HOSTS_KEY.fullmatch(lines[keys[0]]):
        return None  # a flow list, a value on the key's line, a second `hosts:`
    first = next((n for n in range(keys[0] + 1, len(lines)) if not _blank(lines[n])), None)
    item = ITEM.match(lines[first]) if first is not None else None
    if first is None or item is None:
        return None
    indent = len(item.group(1))
    inside = " " * (indent + 1)
    starts: list[int] = []
    end = len(lines)
    for n in range(first, len(lines)):
        line = lines[n]
        if line.startswith(inside) or _blank(line):  # the first test: most lines, quickly
            continue  # comments and blank lines never end an item
        column = len(line) - len(line.lstrip(" "))
        if line[column] == "\t":
            return None  # a tab where indentation ends: leave it to the parser
        if column > indent:
            continue  # inside the item
        if column == indent and ITEM.match(line):
            starts.append(n)
        elif column == 0:
            end = n  # the next top-level key (or document marker)
            break
        else:
            return None  # less indented than the items, yet not top-level: unsure
    bounds = [*starts, end]
    chunks = tuple("\n".join(lines[a:b]) + "\n" for a, b in zip(bounds, bounds[1:]))
    prefix, suffix = lines[:first], lines[end:]
    frame = "\n".join(prefix + [""] * (end - first) + suffix)
    digest = hashlib.sha256("\n".join(prefix).encode() + b"\0" + "\n".join(suffix).encode())
    return Split(frame, digest.hexdigest(), keys[0] + 1, tuple(starts), end, chunks)


def chunk_digest(chunk: str) -> str:
    return hashlib.sha256(chunk.encode()).hexdigest()


@functools.cache
def code_digest() -> str:
    """The code that turns a chunk into a model: ksbuild's version and every source file of
    the package (a change anywhere may change a model), and Python's version (pickles)."""
    digest = hashlib.sha256(f"{FORMAT} {builder.__version__} {sys.version}".encode())
    root = Path(builder.__file__).parent
    for source in sorted(root.rglob("*.py")):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def host_digest(frame_digest: str, salt_seed: str, chunk_digest: str) -> str:
    """A host's identity: equal digests mean equal Host models (the same code, frame, seed
    and text)."""
    return hashlib.sha256(f"{code_digest()} {frame_digest} {salt_seed} {chunk_digest}"
                          .encode()).hexdigest()


def model_digest(model: Any) -> str:
    """The identity of a host the text split cannot name: its pickle (equal bytes unpickle
    to equal models)."""
    return hashlib.sha256(_dumps(("model", code_digest(), model))).hexdigest()


# ---------------------------------------------------------------------------------------------
# The cache files.

Entry = tuple[Any, tuple[str, ...]]  # a host's model and its fleet-wide keys


def _interface(value: ipaddress.IPv4Interface) -> tuple[Any, tuple[Any, ...]]:
    # The default pickles an interface as its text, parsed again on loading: 70% of the
    # time to load 10,000 hosts. From integers it is ~3x faster.
    return ipaddress.IPv4Interface, ((int(value.ip), value.network.prefixlen),)


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[ipaddress.IPv4Interface] = _interface


def _dumps(value: Any) -> bytes:
    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(value)
    return stream.getvalue()


def _delta_path(path: Path) -> Path:
    return path.with_name(path.name + ".delta")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as stream:
            value = pickle.load(stream)
    except Exception:  # missing, truncated, corrupt, written by other code: not a cache
        return None
    if not isinstance(value, dict) or value.get("code") != code_digest():
        return None
    if not isinstance(value.get("hosts"), dict):
        return None
    return value


@dataclass
class Cache:
    frame_digest: str
    hosts: dict[str, Entry]  # the base's entries and the delta's
    delta: dict[str, Entry]
    base_id: str


def read(path: Path) -> Cache | None:
    base = _read(path)
    if base is None or not isinstance(base.get("frame"), str):
        return None
    hosts = dict(base["hosts"])
    delta = _read(_delta_path(path))
    delta_hosts = delta["hosts"] if delta is not None and delta.get("base") == base.get(
        "id") else {}
    hosts.update(delta_hosts)
    return Cache(base["frame"], hosts, delta_hosts, str(base.get("id")))


@dataclass(frozen=True)
class Update:
    """What a load leaves to write into the cache (`write`), once the build succeeded."""

    frame_digest: str
    entries: dict[str, Entry]  # every host's (a new base), or the hosts the base lacks
    base_id: str | None  # None: a new base; else the base the delta goes with


def write(path: Path, update: Update) -> None:
    if update.base_id is None:
        write_base(path, update.frame_digest, update.entries)
    else:
        write_delta(path, update.base_id, update.entries)


def sweep(path: Path) -> None:
    """The temporary files of writes that were killed (builder/output.py atomic_file)."""
    output.sweep(path.parent, [f".{path.name}.*.part", f".{_delta_path(path).name}.*.part"])


def write_base(path: Path, frame_digest: str, hosts: dict[str, Entry]) -> None:
    """Every host's entry, after a full load; the delta of the previous base goes."""
    base_id = hashlib.sha256(os.urandom(16)).hexdigest()
    data = _dumps({"code": code_digest(), "frame": frame_digest, "id": base_id,
                   "hosts": hosts})
    write_bytes(path, data)
    remove(_delta_path(path))


def write_delta(path: Path, base_id: str, new: dict[str, Entry]) -> None:
    """The entries the base lacks (the hosts parsed since it was written)."""
    data = _dumps({"code": code_digest(), "base": base_id, "hosts": new})
    write_bytes(_delta_path(path), data)
