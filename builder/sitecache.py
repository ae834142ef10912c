"""What lets a rebuild skip parsing the hosts whose text did not change (issue 16): the site
text split without YAML into a frame and one chunk per host, and the per-host cache file.

The split is used only where it cannot differ from what the YAML parser sees: a block
sequence under a top-level `hosts:` key, in a text without anchors, aliases, tags or merge
keys (any `&`, `*`, `!` or `<<` disqualifies it). Anything else loads the whole document.
A chunk that changed is composed on its own by the loader (builder/site.py), which checks it
is exactly one item of a sequence; anything unexpected falls back to the full load too.

The cache maps a chunk's text to the host's model, its fleet-wide keys (names, MACs,
addresses) and its digest (`host_digest`, made with the model's salt seed), valid only for
the code that wrote it (`code_digest`: ksbuild's version and source, Python's version) and
the frame text it was made under (`frame_digest`). Keyed by the text itself: a lookup is
an exact comparison, and costs no sha256 a host (10,000 of them were ~6 ms of a load). It
lives in two files: a base written after a full load, and a small delta with the hosts
parsed since, so a one-host change does not rewrite every host's model. Either file
unreadable, truncated, damaged (a CRC-32 of its body) or from other code: it is ignored, and
the load is a full one.

A file's body is an index (marshal: each chunk, its keys, its digest, and the few fields a
rebuild reads of every host, `EAGER`) and the pickle of its hosts' models. A read makes each
host from the index alone, and unpickles the models only when a field outside `EAGER` is read
(site.Host.__getattr__): a one-host rebuild of 10,000 hosts reads none of the unchanged
hosts' other fields, and unpickling them all was ~0.16 s, 2/3 of the load.
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import io
import ipaddress
import itertools
import marshal
import os
import pickle
import re
import struct
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import builder
from builder import output, schema
from builder.output import remove, write_bytes

if TYPE_CHECKING:
    from builder.site import Host

FORMAT = 3  # 3: an index and the models, unpickled lazily; 2: keyed by the chunks' text
# The fields a rebuild of one host reads of every host (its files' names, the PXE checks, the
# password keys, the salt seed); a host from the cache has these until another is read.
EAGER = ("hostname", "mac", "source", "root_password_hash", "root_password_env", "salt_seed")
# The key in a cached host's __dict__ of what fills in the rest (site.Host.__getattr__).
FILL = "_ksbuild_fill"
_CRC = struct.Struct("<I")  # the body's CRC-32
_INDEX = struct.Struct("<Q")  # the index's length
# What could change how the text around it is read: anchors, aliases, tags, merge keys.
UNSAFE = ("&", "*", "!", "<<")
# The patterns below look for a line by the newline before it: re then skips to each "\n"
# quickly, where "^" made it try every character (0.1 s for a 10,000-host text).
HOSTS_KEY = re.compile(r"hosts:[ \t]*(?:#.*)?\r?")
CONTENT = re.compile(r"\n[ \t]*[^ \t\r\n#]")
ITEM = re.compile(r"( *)-(?: |\r?$)", re.M)
# Where the hosts block ends: a line at column 0 that is not blank, a comment (or an item,
# when the items are at column 0).
END = re.compile(r"\n(?=[^ \t\r\n#])")
END_OF_INDENTLESS = re.compile(r"\n(?=[^ \t\r\n#-]|-(?! |\r?$))", re.M)


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


def split(text: str) -> Split | None:
    """The frame and the host chunks, or None where the split could be ambiguous. Regular
    expressions over the whole text (a loop over 150,000 lines cost 0.1 s)."""
    if any(mark in text for mark in UNSAFE):
        return None
    keys = [0] if text.startswith("hosts:") else []
    keys += [match.start() + 1 for match in re.finditer("\nhosts:", text)]
    if len(keys) != 1:
        return None
    key_end = text.find("\n", keys[0])
    if key_end < 0 or not HOSTS_KEY.fullmatch(text, keys[0], key_end):
        return None  # a flow list or a value on the key's line
    first = CONTENT.search(text, key_end)  # the first line not blank nor a comment
    item = ITEM.match(text, first.start() + 1) if first is not None else None
    if item is None:
        return None
    indent = len(item.group(1))
    after = (END_OF_INDENTLESS if indent == 0 else END).search(text, item.start())
    end = after.start() + 1 if after is not None else len(text)
    # With the items at column 0, END_OF_INDENTLESS stopped before any line _unsure's other
    # branches match: only a tab can (a regex over 150,000 lines for none, ~6 ms).
    if (indent > 0 or text.find("\t", item.start(), end) >= 0) and \
            _unsure(indent).search(text, item.start() - 1, end):
        return None
    # Past those checks, every line of the block that starts with the items' indent and a
    # dash is an item: str.split finds them, and map and accumulate count the chunks' lines,
    # in C (a regex's matches and a loop over 10,000 items were half of this function).
    head = " " * indent + "-"
    pieces = text[item.start() + len(head):end].split("\n" + head)
    last = pieces.pop()
    chunks = (*[head + piece + "\n" for piece in pieces], head + last)
    lines = list(itertools.accumulate(map(str.count, chunks, itertools.repeat("\n")),
                                      initial=text.count("\n", 0, item.start())))
    prefix, suffix = text[:item.start()], text[end:]
    frame = prefix + "\n" * (lines[-1] - lines[0]) + suffix
    digest = hashlib.sha256(prefix.encode() + b"\0" + suffix.encode()).hexdigest()
    return Split(frame, digest, text.count("\n", 0, keys[0]) + 1, tuple(lines[:-1]),
                 lines[-1], chunks)


@functools.cache
def _unsure(indent: int) -> re.Pattern[str]:
    """A line in the hosts block the split cannot place: indentation that ends in a tab, or
    content less indented than the items' contents that is not an item."""
    fewer = f" {{1,{indent - 1}}}[^ \t\r\n#]|" if indent > 1 else ""
    return re.compile(f"\n(?: *\t|{fewer} {{{indent}}}(?!-(?: |\r?$))[^ \t\r\n#])", re.M)


@functools.cache
def code_digest() -> str:
    """The code that turns a chunk into a model: ksbuild's version and every source file of
    the package (a change anywhere may change a model), and Python's version (pickles)."""
    digest = hashlib.sha256(f"{FORMAT} {builder.__version__} {sys.version}".encode())
    root = Path(builder.__file__).parent
    for source in sorted(root.rglob("*.py")):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def host_digest(frame_digest: str, salt_seed: str, chunk: str) -> str:
    """A host's identity: equal digests mean equal Host models (the same code, frame, seed
    and text). The seed's length before it: what follows it is the chunk, whatever either
    holds."""
    return hashlib.sha256(f"{code_digest()} {frame_digest} {len(salt_seed)}:{salt_seed} "
                          f"{chunk}".encode()).hexdigest()


def model_digest(model: Any) -> str:
    """The identity of a host the text split cannot name: its pickle (equal bytes unpickle
    to equal models)."""
    return hashlib.sha256(dumps(("model", code_digest(), model))).hexdigest()


# ---------------------------------------------------------------------------------------------
# The cache files.

Entry = tuple[Any, tuple[str, ...], str]  # a host's model, its fleet-wide keys, its digest


def _interface(value: ipaddress.IPv4Interface) -> tuple[Any, tuple[Any, ...]]:
    # The default pickles an interface as its text, parsed again on loading: 70% of the
    # time to load 10,000 hosts. From integers (and a shared network) it is ~20x faster.
    args = (int(value.ip), value.network.prefixlen)
    if schema._REBUILD_WORKS:
        return schema.interface_from_ints, args
    return ipaddress.IPv4Interface, (args,)


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[ipaddress.IPv4Interface] = _interface


def dumps(value: Any) -> bytes:
    """A pickle of models (IPv4 interfaces as integers, for speed)."""
    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(value)
    return stream.getvalue()


def _delta_path(path: Path) -> Path:
    return path.with_name(path.name + ".delta")


def encode(entries: dict[str, Entry]) -> bytes:
    """A cache file's body: CRC-32 of the rest, the index's length, the index, the models.
    The index in columns (the chunks, the EAGER fields, the keys, the digests): unmarshalled
    and made into hosts in half the time of one tuple a host."""
    values = entries.values()
    index = marshal.dumps((tuple(entries), tuple({name: getattr(host, name) for name in EAGER}
                                                 for host, _, _ in values),
                           tuple(keys for _, keys, _ in values),
                           tuple(digest for _, _, digest in values)))
    body = _INDEX.pack(len(index)) + index + dumps([host for host, _, _ in values])
    return _CRC.pack(zlib.crc32(body)) + body


class _Models:
    """The models of one cache file's hosts, unpickled when the first of them is read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.shells: list[Host] = []
        self.lock = threading.Lock()  # a second thread's read waits for the first's fill

    def fill(self) -> None:
        with self.lock:
            if not self.shells:
                return  # filled already (each shell keeps a reference to this method)
            models = pickle.loads(self.data)
            for shell, model in zip(self.shells, models, strict=True):
                # The model's fields replace the shell's (FILL with them): no attribute is
                # set one by one on a frozen dataclass.
                object.__setattr__(shell, "__dict__", model.__dict__)
            self.shells, self.data = [], b""


def decode(data: bytes) -> dict[str, Entry] | None:
    """The entries of a body `encode` made (each host a shell: its EAGER fields, the rest
    filled in on first read), or None where it is damaged."""
    from builder.site import Host

    view = memoryview(data)
    if len(data) < _CRC.size + _INDEX.size or \
            _CRC.unpack_from(view)[0] != zlib.crc32(view[_CRC.size:]):
        return None
    start = _CRC.size + _INDEX.size
    end = start + _INDEX.unpack_from(view, _CRC.size)[0]
    models = _Models(data[end:])
    chunks, eager, keys, digests = marshal.loads(view[start:end])
    new, set_dict, fill = object.__new__, object.__setattr__, models.fill
    models.shells = [new(Host) for _ in chunks]
    for shell, fields in zip(models.shells, eager, strict=True):
        fields[FILL] = fill
        set_dict(shell, "__dict__", fields)
    return dict(zip(chunks, zip(models.shells, keys, digests, strict=True), strict=True))


def _read(path: Path, *header: str) -> dict[str, Entry] | None:
    """The entries of a cache file whose first line is `header` (its kind, the code's digest
    and what it goes with), checked before the rest is read."""
    expected = " ".join(("ksbuild-site-cache", *header)).encode() + b"\n"
    try:
        with open(path, "rb") as stream:
            if stream.readline() != expected:
                return None  # another frame, other code, or not a cache at all
            data = stream.read()
        return decode(data)
    except Exception:  # missing, truncated, corrupt: not a cache
        return None


def _write(path: Path, hosts: dict[str, Entry], *header: str, data: bytes | None = None
           ) -> None:
    write_bytes(path, " ".join(("ksbuild-site-cache", *header)).encode() + b"\n" +
                (encode(hosts) if data is None else data))


@dataclass
class Cache:
    hosts: dict[str, Entry]  # the base's entries and the delta's
    delta: dict[str, Entry]
    base_id: str


def _base_id(path: Path) -> str:
    try:
        with open(path, "rb") as stream:
            return stream.readline().split()[-1].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def read(path: Path, frame_digest: str) -> Cache | None:
    """The cache for a text of this frame, or None."""
    base_id = _base_id(path)
    base = _read(path, "base", code_digest(), frame_digest, base_id)
    if base is None:
        return None
    delta = _read(_delta_path(path), "delta", code_digest(), base_id) or {}
    return Cache({**base, **delta}, delta, base_id)


@dataclass(frozen=True)
class Update:
    """What a load leaves to write into the cache (`write`), once the build succeeded."""

    frame_digest: str
    entries: dict[str, Entry]  # every host's (a new base), or the hosts the base lacks
    base_id: str | None  # None: a new base; else the base the delta goes with


def write(path: Path, update: Update, data: bytes | None = None) -> None:
    """`data`: encode(update.entries) made already (a build makes it while its workers
    render, and writes the file only once it succeeded)."""
    if update.base_id is None:
        write_base(path, update.frame_digest, update.entries, data)
    else:
        write_delta(path, update.base_id, update.entries, data)


def sweep(path: Path) -> None:
    """The temporary files of writes that were killed (builder/output.py atomic_file)."""
    output.sweep(path.parent, [f".{path.name}.*.part", f".{_delta_path(path).name}.*.part"])


def write_base(path: Path, frame_digest: str, hosts: dict[str, Entry],
               data: bytes | None = None) -> None:
    """Every host's entry, after a full load; the delta of the previous base goes."""
    _write(path, hosts, "base", code_digest(), frame_digest, os.urandom(16).hex(), data=data)
    remove(_delta_path(path))


def write_delta(path: Path, base_id: str, new: dict[str, Entry],
                data: bytes | None = None) -> None:
    """The entries the base lacks (the hosts parsed since it was written)."""
    _write(_delta_path(path), new, "delta", code_digest(), base_id, data=data)
