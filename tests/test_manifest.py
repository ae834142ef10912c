"""The manifest's bytes: manifest.update (the last build's manifest with the rows that
changed spliced in) gives exactly what manifest.dumps writes from nothing, or None where it
cannot tell them."""

from __future__ import annotations

import json
import random

import pytest

from builder import manifest
from builder.manifest import Row

INPUTS: list[Row] = [("site", "site.yaml", "a" * 64, 10), ("template", "host.ks.j2", "b" * 64, 5)]
SECTIONS = {"secure_boot": {"warnings": ["one"]}}


def rows(names: list[tuple[str, str]], seed: int) -> dict[tuple[str, str], Row]:
    pick = random.Random(seed)
    return {(kind, path): (kind, path, f"{pick.getrandbits(256):064x}", pick.randrange(1 << 20))
            for kind, path in names}


# Names whose order as paths is not their order as hostnames ("a-b" < "a.cfg"), non-ASCII,
# quotes and backslashes (json escapes them), and every kind a build lists.
NAMES = [("kickstart", f"ks/{name}.cfg") for name in ("a", "a-b", "a.b", "b", "zé", 'q"\\')] + [
    ("iso", "iso/site.iso")] + [("pxe", f"pxe/{n}") for n in (
        "hosts.json", "http/ks/a.cfg", "pxelinux.cfg/01-52-54-00-00-00-01", "grub.cfg-01",
        "pxelinux.0")]


def document(outputs: dict[tuple[str, str], Row]) -> bytes:
    return manifest.dumps("1.0", 1700000000, INPUTS, list(outputs.values()), SECTIONS)


@pytest.mark.parametrize("seed", range(200))
def test_update_gives_what_dumps_gives(seed: int) -> None:
    """Random edits of a manifest's outputs: rows changed, removed, added (first, last,
    between), all removed but one, all replaced."""
    pick = random.Random(seed)
    before = rows(pick.sample(NAMES, pick.randrange(1, len(NAMES))), seed)
    after = rows(pick.sample(NAMES, pick.randrange(1, len(NAMES))), seed + 1000)
    for key in pick.sample(sorted(after), pick.randrange(len(after) + 1)):
        if key in before:  # unchanged: the same row in both
            after[key] = before[key]
    changes: dict[tuple[str, str], Row | None] = {key: None for key in before if key not in after}
    changes.update((key, row) for key, row in after.items() if before.get(key) != row)
    spliced = manifest.update(document(before), "1.0", 1700000000, INPUTS, changes, SECTIONS)
    assert spliced == document(after)
    assert json.loads(spliced)["outputs"] == [
        dict(zip(("kind", "path", "sha256", "size"), row)) for row in sorted(after.values())]


def test_update_of_nothing_changed_is_the_same_manifest_with_the_new_inputs() -> None:
    outputs = rows(NAMES, 1)
    inputs: list[Row] = [*INPUTS, ("overlay", "etc/motd", "c" * 64, 3)]
    assert manifest.update(document(outputs), "1.1", 1800000000, inputs, {}) == \
        manifest.dumps("1.1", 1800000000, inputs, list(outputs.values()))


def damaged(text: bytes) -> list[bytes]:
    """`text` with its list of outputs' structure broken in a few ways (each row's: update
    reads only the rows it compares, trusting the caller that `previous` is the manifest it
    recorded)."""
    return [b"", b"not json", text[:len(text) // 2], text.replace(b'"outputs"', b'"outputz"'),
            text.replace(b'      "kind": ', b'      "kynd": '),
            text.replace(b'      "path": "', b'      "path": '),
            text.replace(b"\n  ]", b"\n ]"),
            text.replace(b'"ks/a.cfg"', b'"ks/\xe9.cfg"')]  # not ASCII: not json.dumps'


@pytest.mark.parametrize("number", range(8))
def test_update_of_what_is_not_a_manifest_it_wrote_is_none(number: int) -> None:
    outputs = rows(NAMES, 2)
    text = damaged(document(outputs))[number]
    change = {NAMES[3]: (*NAMES[3], "d" * 64, 1)}
    assert text != document(outputs)
    assert manifest.update(text, "1.0", 1700000000, INPUTS, change) is None


def test_update_that_does_not_add_up_is_none() -> None:
    """A row removed that the manifest has not; every row removed (the list "[]" is dumps'
    to write); a manifest without outputs."""
    outputs = rows(NAMES[:5], 3)
    text = document(outputs)
    assert manifest.update(text, "1.0", 1, INPUTS, {NAMES[7]: None}) is None
    assert manifest.update(text, "1.0", 1, INPUTS, dict.fromkeys(outputs)) is None
    assert manifest.update(document({}), "1.0", 1, INPUTS, {NAMES[0]: (*NAMES[0], "e", 1)}) \
        is None
