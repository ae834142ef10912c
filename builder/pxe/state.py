"""Which hosts of a PXE tree have installed, and switching their boot entries.

The tree's `hosts.json` (written by builder/pxe/tree.py) lists every host: its MAC and the exact
text of its install entries. A host that has installed has a marker file
`state/installed/<hostname>` and local-boot entries in place of the install ones. The marker
is the truth: it is written before the entries are switched to local and removed before they
are switched back, and a rebuild of the tree (which starts from install entries) re-applies
it, so a crash or a rebuild never makes an installed host install again by surprise.

Every change holds an exclusive lock on `.<tree name>.lock` beside the tree (fcntl.flock), as
does a rebuild while it reads the markers and renames the new tree into place, so a host that
reports in the middle of a rebuild is never lost.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import operator
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from builder.errors import InputError
from builder.output import write_bytes
from builder.pxe.menus import local_entries

INDEX = "hosts.json"
INDEX_FORMAT = 1
INSTALLED = Path("state") / "installed"
SERVED_MODE = 0o644  # what the web and TFTP servers read, whatever the umask


@dataclass(frozen=True)
class IndexedHost:
    hostname: str
    mac: str
    install: dict[str, str]  # path in the tree -> text of the install entry


@dataclass(frozen=True)
class Index:
    server: str
    hosts: dict[str, IndexedHost]
    by_mac: dict[str, str]  # mac (lower case, colons) -> hostname


def index_data(server: str, hosts: list[IndexedHost]) -> bytes:
    """hosts.json's bytes: sorted keys, one host per line (readable, diffable, reproducible)."""
    return index_from_lines(server, {host.hostname: index_line(host) for host in hosts})


def index_line(host: IndexedHost) -> bytes:
    """A host's line in hosts.json (without the comma between lines): json.dumps of
    {"mac": ..., "install": ...} with sorted keys, written out (3x as fast: 10,000 lines).
    Bytes: the lines of a large fleet's hosts.json are 23 MB, copied from one tree to the
    next without being decoded and encoded again."""
    quote = json.encoder.encode_basestring_ascii  # what json.dumps does with a str
    install = ", ".join(f"{quote(path)}: {quote(host.install[path])}"
                        for path in sorted(host.install))
    line = f'{quote(host.hostname)}: {{"install": {{{install}}}, "mac": {quote(host.mac)}}}'
    return line.encode()  # ASCII: quote() escapes the rest


def index_from_lines(server: str, lines: dict[str, bytes]) -> bytes:
    """hosts.json from each host's line (index_line), in hostname order."""
    return _index_bytes(_index_head(server), [lines[name] for name in sorted(lines)])


INDEX_TAIL = b"\n}}\n"


def _index_head(server: str) -> bytes:
    """hosts.json up to its first host's line."""
    return (json.dumps({"format": INDEX_FORMAT, "server": server})[:-1] + ', "hosts": {\n'
            ).encode()


def _index_bytes(head: bytes, lines: Sequence[bytes | memoryview]) -> bytes:
    if not lines:
        return head + INDEX_TAIL[1:]
    parts: list[bytes | memoryview] = [head, *[b",\n"] * (2 * len(lines) - 1), INDEX_TAIL]
    parts[1::2] = lines
    return b"".join(parts)  # one copy of 23 MB, not two (a new buffer's pages cost)


def splice_index(old: bytes, server: str, kept: AbstractSet[str],
                 lines: Mapping[str, bytes]) -> bytes | None:
    """index_from_lines(server, ...) of the `kept` hosts' lines in `old` (a hosts.json) and
    `lines` (which win), made by copying the runs of `old` between the lines that go or
    change: a rebuild after one host of 10,000 changed need not split and join 23 MB. `old`
    itself when the result has its bytes (the caller need not hash them again). None when
    `old` is not as index_from_lines writes it or lacks a `kept` host: build it from lines."""
    parsed = _index_lines(old)
    if parsed is None:
        return None
    names, starts, ends = parsed
    if not kept <= (present := set(names)):
        return None
    parts: list[bytes | memoryview] = []
    same, cursor = True, 0
    for name in sorted((present - kept) | lines.keys()):  # what goes, comes or changes
        at = bisect.bisect_left(names, name, cursor)
        if at > cursor:  # the kept lines before it, with the commas between them
            parts.append(memoryview(old)[starts[cursor]:ends[at - 1]])
        found = at < len(names) and names[at] == name
        line = lines.get(name)
        if line is not None:
            parts.append(line)
        same = same and found and line == old[starts[at]:ends[at]]
        cursor = at + 1 if found else at
    if cursor < len(names):
        parts.append(memoryview(old)[starts[cursor]:ends[-1]])
    head = _index_head(server)
    if same and old.startswith(head):
        return old
    return _index_bytes(head, parts)


def _index_lines(data: bytes) -> tuple[list[str], list[int], list[int]] | None:
    """A hosts.json's hostnames, in order, and where each one's line starts and ends (its
    comma aside); None unless as index_from_lines writes it: one line a host, each a plain
    hostname in quotes first, sorted, a comma after each but the last. For 10,000 lines, two
    find()s each; the checks on all at once."""
    end = len(data) - len(INDEX_TAIL)
    start = data.find(b"\n") + 1
    if not data.endswith(INDEX_TAIL) or start > end + 1:
        return None
    find = data.find
    quoted: list[bytes] = []
    starts: list[int] = []
    stops: list[int] = []  # each line's last byte: its comma
    while start <= end:  # no host: the head's newline is the tail's
        newline = find(b"\n", start)
        quoted.append(data[start:find(b'": ', start, newline) + 1])
        starts.append(start)
        stops.append(newline - 1)
        start = newline + 1
    if not starts:
        return [], [], []
    joined = b"\n".join(quoted)
    commas = bytes(map(data.__getitem__, stops))
    if not _QUOTED_NAMES.fullmatch(joined) or \
            commas[:-1].count(b",") != len(commas) - 1 or commas[-1:] == b",":
        return None
    names = joined.decode().replace('"', "").split("\n")
    if not all(map(operator.lt, names, names[1:])):
        return None
    stops[-1] = end  # the last line has no comma
    return names, starts, stops


# The hostnames of _index_lines, a line each: JSON strings of printable ASCII, nothing
# escaped in them (json.dumps escapes the rest).
_QUOTED_NAMES = re.compile(rb'"[ !#-\[\]-~]*"(?:\n"[ !#-\[\]-~]*")*')


_cache: dict[Path, tuple[tuple[int, int, int], Index]] = {}
_cache_lock = threading.Lock()


def read_index(tree: Path) -> Index:
    """The tree's index; cached per file version (a rebuilt tree is picked up at once)."""
    path = tree / INDEX
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(f"{tree}: not a ksbuild PXE tree (no {INDEX}); "
                         "build one with `ksbuild pxe SITE -o DIR`") from None
    key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        cached = _cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
    index = _parse_index(path)
    with _cache_lock:
        _cache[path] = (key, index)
    return index


def _parse_index(path: Path) -> Index:
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
        if data.get("format") != INDEX_FORMAT:
            raise InputError(f"{path}: index format {data.get('format')!r} is not "
                             f"{INDEX_FORMAT}; rebuild the tree with this ksbuild")
        hosts = {name: IndexedHost(name, entry["mac"], dict(entry["install"]))
                 for name, entry in data["hosts"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid ksbuild PXE index: {exc}") from None
    return Index(str(data["server"]), hosts, {h.mac: h.hostname for h in hosts.values()})


def installed(tree: Path) -> set[str]:
    """Hostnames with an installed marker."""
    folder = tree / INSTALLED
    try:
        return {entry.name for entry in os.scandir(folder) if not entry.name.startswith(".")}
    except FileNotFoundError:
        return set()


# ---------------------------------------------------------------------------------------------
# The lock.


def lock_path(tree: Path) -> Path:
    tree = tree.absolute()
    return tree.parent / f".{tree.name}.lock"


class TreeLock:
    """flock on the tree's lock file; acquire() blocks until no other change is running."""

    def __init__(self, tree: Path) -> None:
        self.path = lock_path(tree)
        self.handle: TextIO | None = None

    def acquire(self) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("a")
            fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> TreeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# Threads of one process (ksbuild serve) share one flock'ed file description, so they also
# need a lock among themselves.
_thread_lock = threading.Lock()


@contextlib.contextmanager
def locked(tree: Path) -> Iterator[None]:
    with _thread_lock, TreeLock(tree) as lock:
        lock.acquire()
        yield


# ---------------------------------------------------------------------------------------------
# Switching.


def host_of(index: Index, name: str, tree: Path) -> IndexedHost:
    host = index.hosts.get(name.lower())
    if host is None:
        raise InputError(f"{tree}: no host named {name!r} in this PXE tree")
    return host


def set_installed(tree: Path, hostname: str, done: bool, note: str = "") -> bool:
    """Switch one host to local boot (done) or back to install; False if it already was."""
    with locked(tree):
        host = host_of(read_index(tree), hostname, tree)
        marker = tree / INSTALLED / host.hostname
        if marker.exists() == done:
            return False
        if done:
            write_bytes(marker, f"installed{': ' + note if note else ''}\n".encode(), SERVED_MODE)
            write_entries(tree, local_entries(host.hostname, host.mac))
        else:
            marker.unlink()
            write_entries(tree, host.install)
        return True


def write_entries(tree: Path, files: dict[str, str]) -> None:
    """Each file replaced in one rename: a loader reads the old entry or the new, never half."""
    for relative, text in files.items():
        write_bytes(tree / relative, text.encode(), SERVED_MODE)


def carry_over(old: Path, new: Path, macs: dict[str, str], keep: set[str]) -> None:
    """In a tree being built (all install entries): copy the markers of `keep` from the old
    tree and switch those hosts to local boot. `macs`: hostname -> MAC in the new tree."""
    for name in sorted(keep):
        write_bytes(new / INSTALLED / name, (old / INSTALLED / name).read_bytes(), SERVED_MODE)
        for relative, text in local_entries(name, macs[name]).items():
            if not _link_same(old / relative, new / relative, text.encode()):
                write_bytes(new / relative, text.encode(), SERVED_MODE)


def _link_same(old: Path, new: Path, data: bytes) -> bool:
    """Make `new` a hard link to `old` if `old` holds `data` (an unchanged entry keeps its
    identity across a rebuild)."""
    try:
        if old.is_symlink() or old.read_bytes() != data:
            return False
        temp = new.with_name(f".{new.name}.link")
        temp.unlink(missing_ok=True)
        os.link(old, temp)
    except OSError:
        return False
    os.replace(temp, new)
    return True
