"""out/manifest.json: every input and every output of a build, each with its sha256 and size,
and (`secure_boot`) the UEFI first stage each output hands out, its Authenticode hash and
whether Microsoft's dbx revokes it (builder/secureboot.py).

The manifest is itself reproducible: no absolute paths, no build time, sorted keys, entries
sorted by kind and path. Where the inputs were on the build machine is kept apart, in
out/.ksbuild/state.json, which is not an output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from builder.errors import InputError

MANIFEST = "manifest.json"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Entry(NamedTuple):
    """A tuple (made 60,000 times a build of a large PXE fleet: a dataclass cost 4x as much),
    ordered as the manifest lists entries: by kind, then path."""
    kind: str  # site, template, overlay, base-media, boot-loader, revocations; kickstart, iso,
    #            pxe
    path: str  # relative: to the site's folder, the template folder, or the output folder
    sha256: str
    size: int


Row = tuple[str, str, str, int]  # an Entry as a plain tuple: made 3x as fast, 60,000 times


def entry(kind: str, path: Path, name: str, sha256: str | None = None) -> Entry:
    return Entry(kind, name, sha256 or sha256_file(path), path.stat().st_size)


def _entries(entries: Sequence[Row]) -> str:
    """The entries, sorted, as json.dumps(indent=2, sort_keys=True) writes the list of
    their {kind, path, sha256, size} objects at the document's first level, by an f-string
    (_pieces): the json module's indented encoder is pure Python, and costs seconds for the
    60,000 entries of a large PXE fleet."""
    if not entries:
        return "[]"
    return "[" + "".join(_pieces(sorted(entries)))[1:] + "\n  ]"


# Each object of such a list is written as a piece: what comes before it (a comma, but the
# first's "["; then a newline and its opening line), then its lines. No piece holds SEP
# but at its start (no string in it holds a newline).
SEP = ",\n    {\n"
KIND, PATH = '      "kind": ', '      "path": '
BYTES = {text: text.encode() for text in (SEP, KIND, PATH)}  # update() reads bytes


def _pieces(rows: Iterable[Row]) -> Iterator[str]:
    """Each row's piece, with a comma before it (the first one's a "[" in the list)."""
    quote = json.encoder.encode_basestring_ascii  # what json.dumps does with a str
    kinds: dict[str, str] = {}  # a handful: quoted once
    for kind, path, sha, size in rows:
        quoted = kinds.get(kind) or kinds.setdefault(kind, quote(kind))
        yield (f'{SEP}{KIND}{quoted},\n{PATH}{quote(path)},\n'
               f'      "sha256": {quote(sha)},\n      "size": {size:d}\n    }}')


def dumps(version: str, source_date_epoch: int, inputs: Sequence[Row], outputs: Sequence[Row],
          sections: dict[str, Any] | None = None) -> bytes:
    """The manifest's bytes: json.dumps(indent=2, sort_keys=True) of {ksbuild,
    source_date_epoch, inputs, outputs, **sections}, its two long lists written by
    _entries."""
    before, after = _around(version, source_date_epoch, inputs, sections)
    return before + _entries(outputs).encode() + after


def _around(version: str, source_date_epoch: int, inputs: Sequence[Row],
            sections: dict[str, Any] | None) -> tuple[bytes, bytes]:
    """The manifest's bytes before its list of outputs, and after it."""
    marks = {key: f"\0{key}\0" for key in ("inputs", "outputs")}
    text = json.dumps({"ksbuild": version, "source_date_epoch": source_date_epoch,
                       **(sections or {}), **marks}, indent=2, sort_keys=True)
    before, _, after = text.replace(json.dumps(marks["inputs"]), _entries(inputs), 1
                                    ).partition(json.dumps(marks["outputs"]))
    return before.encode(), (after + "\n").encode()


def update(previous: bytes, version: str, source_date_epoch: int, inputs: Sequence[Row],
           changes: Mapping[tuple[str, str], Row | None],
           sections: dict[str, Any] | None = None) -> bytes | None:
    """dumps() of a build whose outputs are those of the `previous` manifest's bytes with
    the `changes` made: (kind, path) -> the output's row, or None where it is one no more.
    Costs what the changes cost (a large PXE fleet's 60,000 rows are ~10 MB of text, taken
    over as they are, not written again), not what the whole list does. `previous` must be
    the manifest the caller recorded (the rows it does not change are taken on trust, as the
    outputs are by their identity); None where it is not laid out as dumps() lays it out
    (where this looks), lacks a row a change removes, or would list no output: then only
    dumps() can tell the bytes."""
    head = b'\n  "outputs": [' + SEP[1:].encode()  # a key at the first level (2 spaces)
    # The list of outputs is the last at the first level: the keys that follow it are the
    # sections (secure_boot: an object) and source_date_epoch.
    start, end = previous.find(head), previous.rfind(b"\n  ]")
    if start < 0 or end < start:
        return None
    start += len(head) - len(SEP)  # where the first piece begins
    text = bytearray(previous)
    text[start:start + 1] = b","  # as every other piece begins (_pieces)
    try:
        edits = [_edit(text, start, end, key, row) for key, row in sorted(changes.items())]
    except (ValueError, TypeError):  # not laid out as _pieces lays it out (json's errors
        # are ValueErrors; a kind or path not a string cannot be compared: TypeError)
        return None
    view, cursor = memoryview(text), start
    parts: list[bytes | memoryview] = []
    for at, to, piece in edits:
        parts += [view[cursor:at], piece]
        cursor = to
    parts = [part for part in [*parts, view[cursor:end]] if part]
    if not parts:
        return None
    parts[0] = parts[0][1:]  # the first piece's comma: the list's "["
    before, after = _around(version, source_date_epoch, inputs, sections)
    return b"".join([before, b"[", *parts, b"\n  ]", after])


def _edit(text: bytearray, start: int, end: int, key: tuple[str, str], row: Row | None
          ) -> tuple[int, int, bytes]:
    """The change of the row `key` in the pieces text[start:end] (sorted): the offsets of
    what it replaces (its piece; none where it adds one), and what replaces it."""
    at = _bisect(text, start, end, key)
    here = at < end and _key(text, at) == key
    if row is None and not here:
        raise ValueError(f"no row {key} to remove")
    following = text.find(BYTES[SEP], at + 1, end)
    to = (following if following >= 0 else end) if here else at
    return at, to, "".join(_pieces([row])).encode() if row is not None else b""


def _bisect(text: bytearray, lo: int, hi: int, key: tuple[str, str]) -> int:
    """Where, of the pieces text[lo:hi] (sorted), the first whose key is not less than
    `key` begins (hi: none)."""
    sep = BYTES[SEP]
    while lo < hi:
        mid = (lo + hi) // 2
        at = text.find(sep, mid, hi)  # a piece after the middle, else the last before it
        at = at if at >= 0 else text.rfind(sep, lo, mid + len(sep))
        if at < lo:
            raise ValueError(f"no piece at {lo}")
        if _key(text, at) < key:
            following = text.find(sep, at + 1, hi)
            lo = following if following >= 0 else hi
        else:
            hi = at
    return lo


def _key(text: bytearray, at: int) -> tuple[str, str]:
    """(kind, path) of the row whose piece begins at `at`, as the manifest sorts them."""
    kind = at + len(SEP)
    path = text.find(b",\n", kind) + 2
    if not (text.startswith(BYTES[SEP], at) and text.startswith(BYTES[KIND], kind)
            and text.startswith(BYTES[PATH], path)):
        raise ValueError(f"no row at {at}")
    return (json.loads(text[kind + len(KIND):path - 2]),
            json.loads(text[path + len(PATH):text.find(b",\n", path)]))


def read(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no manifest here; build with `ksbuild build` first") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a ksbuild manifest: {exc}") from None
    if not isinstance(document, dict) or "outputs" not in document:
        raise InputError(f"{path}: not a ksbuild manifest (no outputs)")
    return document


def first_difference(left: Path, right: Path) -> int | None:
    """The first byte offset at which two files differ (or where the shorter ends)."""
    offset = 0
    with left.open("rb") as a, right.open("rb") as b:
        while True:
            x, y = a.read(CHUNK), b.read(CHUNK)
            if x != y:
                for index, (p, q) in enumerate(zip(x, y)):
                    if p != q:
                        return offset + index
                return offset + min(len(x), len(y))
            if not x:
                return None
            offset += len(x)
