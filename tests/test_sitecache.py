"""The site loader's per-host cache (builder/sitecache.py): after any edit, a load through the
cache gives the same Site (and the same error) as a load without it; host digests are equal
only for equal hosts."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bench.fleet import fleet_site
from builder import schema, site, sitecache
from builder.errors import InputError
from tests.conftest import REPO

Edit = Callable[[str], str]


def fleet_text(count: int = 40) -> str:
    doc = fleet_site(count)
    doc["pxe"] = {"server": "http://10.0.0.5"}  # a key after the hosts: its lines move
    return yaml.safe_dump(doc, sort_keys=False)


def item_line(text: str, index: int) -> int:
    """The line number (0-based) of hosts[index]'s `- ` line."""
    lines = text.split("\n")
    starts = [n for n, line in enumerate(lines) if line.startswith("- ")]
    return starts[index]


def insert(text: str, at: int, *new: str) -> str:
    lines = text.split("\n")
    return "\n".join(lines[:at] + list(new) + lines[at:])


def set_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def field_changed(text: str) -> str:
    return insert(text, item_line(text, 20) + 1, "  kernel_args: [console=ttyS0]")


def line_above(text: str) -> str:
    return insert(text, item_line(text, 20), "# a comment above hosts[20]", "")


def host_added(text: str) -> str:
    return insert(text, item_line(text, 20), "- hostname: new.example.com",
                  "  mac: 52:54:00:aa:bb:cc", "  bridge: {name: br0, slaves: [eth0]}")


def host_removed(text: str) -> str:
    lines = text.split("\n")
    start, end = item_line(text, 20), item_line(text, 21)
    return "\n".join(lines[:start] + lines[end:])


def host_renamed(text: str) -> str:
    return set_line(text, "kvm00020.", "renamed20.")


def first_renamed(text: str) -> str:  # the salt seed is the first host's name
    return set_line(text, "kvm00000.", "first.")


def host_moved(text: str) -> str:
    lines = text.split("\n")
    start, end = item_line(text, 20), item_line(text, 21)
    moved = lines[start:end]
    rest = lines[:start] + lines[end:]
    at = item_line("\n".join(rest), 3)
    return "\n".join(rest[:at] + moved + rest[at:])


def defaults_changed(text: str) -> str:
    return set_line(text, "timezone: UTC", "timezone: Europe/Berlin")


def seed_given(text: str) -> str:
    return text + "salt_seed: fleet-one\n"


def anchor_added(text: str) -> str:
    text = set_line(text, "  selinux: disabled", "  selinux: &sel disabled")
    return insert(text, item_line(text, 20) + 1, "  selinux: *sel")


def flow_hosts(text: str) -> str:
    doc = yaml.safe_load(text)
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=True)


def comments_and_blanks(text: str) -> str:
    text = insert(text, item_line(text, 20) + 1, "", "  # why this host differs", "")
    return insert(text, item_line(text, 5), "", "", "#   commented out: - hostname: x", "")


def block_scalar(text: str) -> str:
    return insert(text, item_line(text, 20) + 1, "  timezone: >-", "    Europe/Berlin", "")


def tab_separator(text: str) -> str:
    return insert(text, item_line(text, 20) + 1, "  kernel_args:\t[console=ttyS0]")


def crlf(text: str) -> str:
    return field_changed(text).replace("\n", "\r\n")


def indented_items(text: str) -> str:
    text = field_changed(text)
    return "\n".join(("  " + line if line.startswith(("- ", "  ")) and n > 5 else line)
                     for n, line in enumerate(text.split("\n")))


def unterminated_quote(text: str) -> str:
    return insert(text, item_line(text, 20) + 1, '  lang: "en_US.UTF-8')


EDITS: list[Edit] = [field_changed, line_above, host_added, host_removed, host_renamed,
                     first_renamed, host_moved, defaults_changed, seed_given, anchor_added,
                     flow_hosts, comments_and_blanks, block_scalar, tab_separator, crlf,
                     indented_items]


def load_both(path: Path, cache: Path) -> tuple[site.Site, site.Site]:
    """The load through the cache (which is then saved, as a build does) and the full one."""
    cached = site.load(path, cache=cache)
    site.save_cache(cached, cache)
    full = site.load(path)
    return cached, full


def assert_same(cached: site.Site, full: site.Site) -> None:
    assert cached == full
    assert repr(cached) == repr(full)
    assert dict(cached.host_digests) == dict(full.host_digests)


# The edits that leave the frame (all but the hosts block) as it was and the text plain: the
# load takes the other hosts from the cache. The others load the whole file.
FROM_CACHE = {field_changed, line_above, host_added, host_removed, host_renamed, first_renamed,
              host_moved, comments_and_blanks, block_scalar, tab_separator}


def crlf_base(text: str) -> str:
    return text.replace("\n", "\r\n")


def indented_base(text: str) -> str:
    return "\n".join(("  " + line if line.startswith(("- ", "  ")) and n > 5 else line)
                      for n, line in enumerate(text.split("\n")))


def full_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths site.load loaded whole from now on."""
    loaded: list[Path] = []
    real = site._load

    def counting(path: Path) -> site.Site:
        loaded.append(path)
        return real(path)

    monkeypatch.setattr(site, "_load", counting)
    return loaded


@pytest.mark.parametrize("base", [fleet_text, lambda: crlf_base(fleet_text())],
                         ids=["lf", "crlf"])
@pytest.mark.parametrize("edit", EDITS, ids=lambda e: e.__name__)
def test_cached_load_equals_full_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      edit: Edit, base: Callable[[], str]) -> None:
    path, cache = tmp_path / "site.yaml", tmp_path / "out" / "site-cache"
    text = base()
    path.write_bytes(text.encode())
    before, _ = load_both(path, cache)
    assert cache.is_file()
    edited = edit(text)
    path.write_bytes(edited.encode())
    whole = full_loads(monkeypatch)
    site.load(path, cache=cache)
    assert bool(whole) != (edit in FROM_CACHE)
    monkeypatch.undo()
    cached, full = load_both(path, cache)
    assert_same(cached, full)
    assert cached != before
    # and once more, the cache now made from the edited text
    cached, full = load_both(path, cache)
    assert_same(cached, full)


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("    mac: 52:54:00:00:00:14\n",
                        "    mac: 52:54:00:00:00:14\n    timezone: Europe/Berlin\n"),
    lambda t: t.replace("  - hostname: kvm00020", "  # a comment\n\n  - hostname: kvm00020"),
    lambda t: t.replace("  - hostname: kvm00020", "  - hostname: kvm00099"),
], ids=["field", "line-above", "renamed"])
def test_items_indented_under_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    edit: Edit) -> None:
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    text = indented_base(fleet_text())
    assert "\n  - hostname: kvm00020" in text
    path.write_text(text)
    load_both(path, cache)
    path.write_text(edit(text))
    whole = full_loads(monkeypatch)
    site.load(path, cache=cache)
    assert not whole
    monkeypatch.undo()
    assert_same(*load_both(path, cache))


def test_unchanged_hosts_come_from_the_cache(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the edited host is parsed, and a line added above a host moves it without a
    parse of it (its text is the same)."""
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    text = fleet_text()
    path.write_text(text)
    load_both(path, cache)
    parsed: list[str] = []
    real_host = site._host

    def counting(merged: site.Located, seed: str | None) -> site.Host:
        parsed.append(merged.path)
        return real_host(merged, seed)

    monkeypatch.setattr(site, "_host", counting)
    path.write_text(field_changed(text))
    site.save_cache(site.load(path, cache=cache), cache)
    assert parsed == ["hosts[20]"]
    parsed.clear()
    edited = field_changed(text)
    path.write_text(insert(edited, item_line(edited, 30) + 1, "  # moved down"))
    site.save_cache(site.load(path, cache=cache), cache)
    assert parsed == ["hosts[30]"]  # its chunk gained the comment; hosts[31..] only moved


def test_digests_name_equal_hosts_only(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    text = fleet_text()
    path.write_text(text)
    before = site.load(path)
    path.write_text(field_changed(text))
    after = site.load(path)
    changed = {name for name, digest in before.host_digests.items()
               if after.host_digests[name] != digest}
    assert changed == {after.hosts[20].hostname}
    # a site whose hosts were replaced after loading: digests of the new models
    replaced = site.replace(after, hosts=before.hosts)
    assert dict(replaced.host_digests) == {h.hostname: sitecache.model_digest(h)
                                           for h in before.hosts}


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],  # truncated
    lambda data: b"not a pickle at all",
    lambda data: pickle.dumps({"code": "another ksbuild", "hosts": {}, "frame": ""}),
    lambda data: b"",
], ids=["truncated", "garbage", "foreign-version", "empty"])
def test_a_damaged_cache_is_ignored(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    text = fleet_text()
    path.write_text(text)
    load_both(path, cache)
    cache.write_bytes(damage(cache.read_bytes()))
    path.write_text(field_changed(text))
    cached, full = load_both(path, cache)
    assert_same(cached, full)


def test_a_cache_damaged_inside_its_values_is_ignored(tmp_path: Path) -> None:
    """Damage that leaves a valid index and pickle (hosts[5]'s MAC in the model and its
    eager fields, not in its text, the cache's key): the CRC-32 rejects it, else the load
    would hold a MAC the site file does not."""
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    text = fleet_text()
    path.write_text(text)
    load_both(path, cache)
    data = cache.read_bytes()
    damaged = re.sub(rb"(?<!['=])52:54:00:00:00:05", b"52:54:00:00:00:77", data)
    assert damaged.count(b"52:54:00:00:00:77") >= 2  # the index's and the model's
    cache.write_bytes(damaged)
    path.write_text(field_changed(text))
    cached = site.load(path, cache=cache)
    assert cached.hosts[5].mac == "52:54:00:00:00:05"
    assert_same(cached, site.load(path))


def cached_hosts(path: Path, cache: Path) -> tuple[site.Host, ...]:
    """The hosts of a load that takes all but hosts[20] from the cache."""
    path.write_text(fleet_text())
    site.save_cache(site.load(path, cache=cache), cache)
    path.write_text(field_changed(fleet_text()))
    return site.load(path, cache=cache).hosts


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(site.Host)])
def test_a_cached_host_s_first_read_field_is_the_parsed_one(tmp_path: Path, name: str) -> None:
    """A host from the cache holds a few fields until another is read (sitecache.EAGER);
    whichever is read first, it is the full load's (a class attribute, such as a field's
    default, would answer for a field not filled in yet)."""
    hosts = cached_hosts(tmp_path / "site.yaml", tmp_path / "site-cache")
    assert set(vars(hosts[3])) == {*sitecache.EAGER, sitecache.FILL}  # not filled in yet
    full = site.load(tmp_path / "site.yaml").hosts
    assert getattr(hosts[3], name) == getattr(full[3], name)
    filled = name not in sitecache.EAGER  # and then every field is there
    assert (set(vars(hosts[3])) == {f.name for f in dataclasses.fields(site.Host)}) == filled


def test_a_cached_host_pickles_and_copies_whole(tmp_path: Path) -> None:
    hosts = cached_hosts(tmp_path / "site.yaml", tmp_path / "site-cache")
    full = site.load(tmp_path / "site.yaml").hosts
    assert pickle.loads(pickle.dumps(hosts[3])) == full[3]
    assert copy.copy(cached_hosts(tmp_path / "site.yaml", tmp_path / "site-cache")[4]) == full[4]
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        hosts[3].colour  # noqa: B018 - a name that is no field is still an error


def error_of(path: Path, cache: Path | None) -> str:
    with pytest.raises(InputError) as caught:
        site.load(path, cache=cache)
    return str(caught.value)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: set_line(t, "52:54:00:00:00:14", "52:54:00:00:00:03"),
     "hosts[20]: mac 52:54:00:00:00:03 is already used by hosts[3]"),
    (lambda t: set_line(t, "kvm00020.rack000", "kvm00030.rack000"),
     "hosts[30]: hostname kvm00030.rack000.example.com is already used by hosts[20]"),
    (lambda t: set_line(t, "10.0.1.20/8", "10.0.1.2/8"), "is already used by hosts[2]"),
    (lambda t: set_line(t, "10.0.1.20/8", "10.0.1.300/8"), "hosts[20].bridge.address"),
    (unterminated_quote, "YAML syntax error"),
    (lambda t: insert(t, item_line(t, 20) + 1, "  colour: blue"), "unknown key"),
    (lambda t: insert(t, item_line(t, 20) + 1, "  root_password_env: KSBUILD_UNSET_VAR"),
     "give exactly one of root_password_hash or root_password_env"),
    (lambda t: t + "media: {}\n", "media: give exactly one of release, path or url"),
], ids=["mac", "hostname", "address", "bad-address", "quote", "unknown-key", "password",
        "media"])
def test_errors_equal_the_full_loads(tmp_path: Path, edit: Edit, expected: str) -> None:
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    text = fleet_text()
    path.write_text(text)
    load_both(path, cache)
    path.write_text(edit(text))
    message = error_of(path, cache)
    assert message == error_of(path, None)
    assert expected in message


def test_an_environment_variable_unset_since_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    text = set_line(fleet_text(), "  root_password_hash:", "  root_password_env: KSBUILD_PW\n"
                    "  old_hash:")
    text = text.replace("  old_hash:", "#", 1)
    monkeypatch.setenv("KSBUILD_PW", "secret")
    path.write_text(text)
    load_both(path, cache)
    monkeypatch.delenv("KSBUILD_PW")
    message = error_of(path, cache)
    assert message == error_of(path, None)
    assert "KSBUILD_PW is not set" in message


def test_split_refuses_what_it_cannot_be_sure_of() -> None:
    text = fleet_text()
    assert sitecache.split(text) is not None
    assert sitecache.split(flow_hosts(text)) is None
    assert sitecache.split(anchor_added(text)) is None
    assert sitecache.split(text.replace("\n  mac:", "\n\tmac:", 1)) is None
    assert sitecache.split(text + "hosts:\n- hostname: b\n") is None


@pytest.mark.parametrize("text", ["10.0.1.20/8", "192.168.1.108/16", "10.1.0.12/24",
                                  "172.16.5.1/30", "10.9.9.0/31", "203.0.113.7/32",
                                  "0.0.0.1/1", "255.255.255.254/31"])
def test_a_cached_interface_is_the_parsed_one(text: str) -> None:
    """The cache rebuilds interfaces from integers (builder/sitecache.py _interface)."""
    made = ipaddress.IPv4Interface(text)
    assert schema._REBUILD_WORKS
    back = pickle.loads(sitecache.dumps(made))
    assert (back, repr(back), hash(back), back.network, back.netmask, back.hostmask,
            back.with_prefixlen) == (made, repr(made), hash(made), made.network,
                                     made.netmask, made.hostmask, made.with_prefixlen)
    assert vars(back) == vars(made) and back.ip == made.ip


@pytest.mark.parametrize("text", ["10.0.1.20/8", "192.168.1.108/16", "10.1.0.0/16",
                                  "10.1.255.255/16", "10.9.9.0/31", "10.9.9.1/32",
                                  "10.0.0.1/0", "010.0.0.1/8", "10.0.0.1/08", "256.0.0.1/8",
                                  "10.0.0.1/33", "10.0.0.1/255.0.0.0", "1.2.3/8"])
def test_interfaces_read_as_ipaddress_reads_them(text: str) -> None:
    """schema.ipv4_interface's quick path for canonical text: the same interface, or the
    same error, as through ipaddress alone."""
    def slow(text: str) -> object:
        try:
            schema._REBUILD_WORKS = False
            return schema.ipv4_interface(text)
        except ValueError as exc:
            return str(exc)
        finally:
            schema._REBUILD_WORKS = True

    try:
        quick: object = schema.ipv4_interface(text)
    except ValueError as exc:
        quick = str(exc)
    expected = slow(text)
    assert (quick, repr(quick)) == (expected, repr(expected))
    if isinstance(quick, ipaddress.IPv4Interface):
        assert vars(quick) == vars(expected)


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("  - hostname: kvm2.example.com", "  # moved down a line\n"
                        "  - hostname: kvm2.example.com"),
    lambda t: t.replace("        bond0.30: {address: 198.51.100.12/24}",
                        "        bond0.30: {address: 198.51.100.12/24, mtu: 1500}"),
    lambda t: t.replace('"52:54:00:10:00:12"', '"52:54:00:10:00:01"'),  # kvm1's NIC
], ids=["line-above", "vlan-field", "duplicate-mac"])
def test_the_example_fleet_with_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         edit: Edit) -> None:
    """kickstarts/fleet.yaml (bonds, VLANs, bridges under `network:`): the cache gives what
    the full load gives, or its error."""
    path, cache = tmp_path / "fleet.yaml", tmp_path / "site-cache"
    text = (REPO / "kickstarts" / "fleet.yaml").read_text()
    path.write_text(text)
    assert_same(*load_both(path, cache))
    edited = edit(text)
    assert edited != text
    path.write_text(edited)
    try:
        expected: object = site.load(path)
    except InputError as exc:
        expected = str(exc)
        assert error_of(path, cache) == expected
        return
    whole = full_loads(monkeypatch)
    assert site.load(path, cache=cache) == expected
    assert not whole
    monkeypatch.undo()
    assert_same(*load_both(path, cache))


def test_what_hosts_inherit_is_one_object_in_the_model_and_the_cache(tmp_path: Path) -> None:
    """Packages, storage, repos, the firewall and a bridge's slave NIC taken from the defaults
    are one object for all hosts (each would otherwise be pickled and unpickled once a
    host); a host that sets its own gets its own, and nothing else changes."""
    doc = fleet_site(6)
    doc["defaults"].update(
        packages={"groups": ["base"]}, repos=[{"name": "local", "baseurl": "file:///srv/r"}],
        storage={"partitions": [{"mount": "/", "size": 4096, "grow": True}]})
    doc["hosts"][5]["firewall"] = {"enabled": True}
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for _ in range(2):  # parsed, then from the cache
        loaded = site.load(path, cache=cache)
        site.save_cache(loaded, cache)
        first, *others, own = loaded.hosts
        for host in others:
            assert host.packages is first.packages and host.storage is first.storage
            assert host.repos[0] is first.repos[0] and host.firewall is first.firewall
            assert host.network.devices[0] is first.network.devices[0]  # eth0 in br0
            assert host.network.devices[1] is not first.network.devices[1]  # br0: its address
        assert own.firewall == site.Firewall(True, ("ssh",)) != first.firewall
        assert loaded == site.load(path)


@pytest.mark.parametrize("edit", [lambda t: t, crlf_base, indented_base, seed_given,
                                  first_renamed, comments_and_blanks, block_scalar],
                         ids=["plain", "crlf", "indented", "seed", "first", "comments",
                              "block-scalar"])
def test_a_load_shared_with_a_child_process_equals_the_full_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Edit) -> None:
    """With no cache to use, a large site's hosts are parsed half by a forked child
    (site._load_parallel): the model, digests and the cache written are the full load's."""
    path, cache = tmp_path / "site.yaml", tmp_path / "site-cache"
    path.write_bytes(edit(fleet_text(41)).encode())
    monkeypatch.setattr(site, "PARALLEL_LOAD_MIN", 2)
    whole = full_loads(monkeypatch)
    shared = site.load(path, cache=cache)
    assert not whole
    site.save_cache(shared, cache)
    monkeypatch.undo()
    full = site.load(path)
    assert_same(shared, full)
    assert_same(site.load(path, cache=cache), full)  # from the cache it wrote
    assert shared.cache_update is not None and full.cache_update is not None
    assert shared.cache_update.entries == full.cache_update.entries


@pytest.mark.parametrize("edit", [
    lambda t: set_line(t, "52:54:00:00:00:25", "52:54:00:00:00:03"),  # across the halves
    lambda t: set_line(t, "52:54:00:00:00:03", "52:54:00:00:00:25"),
    lambda t: set_line(t, "10.0.1.30/8", "10.0.1.300/8"),  # in the child's half
    lambda t: set_line(t, "10.0.1.3/8", "10.0.1.300/8"),  # in the parent's
    lambda t: insert(t, item_line(t, 30) + 1, '  lang: "en_US.UTF-8'),
    lambda t: insert(t, item_line(t, 30) + 1, "  colour: blue"),
    lambda t: insert(t, item_line(t, 30) + 1, "  root_password_env: KSBUILD_UNSET_VAR"),
    lambda t: t + "media: {}\n",
], ids=["mac-later", "mac-earlier", "child-address", "parent-address", "quote", "unknown-key",
        "password", "media"])
def test_errors_of_a_shared_load_equal_the_full_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: Edit) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(edit(fleet_text(41)))
    expected = error_of(path, None)
    monkeypatch.setattr(site, "PARALLEL_LOAD_MIN", 2)
    assert error_of(path, tmp_path / "site-cache") == expected
