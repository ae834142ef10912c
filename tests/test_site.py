"""The site loader: what it accepts, and one clear line for everything it refuses."""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder import site
from builder.errors import InputError
from tests.conftest import REPO
from tests.sitefiles import BASE, HASH, site_doc, write_site


def load_error(tmp_path: Path, doc: dict[str, Any] | str) -> str:
    path = write_site(tmp_path, doc)
    with pytest.raises(InputError) as caught:
        site.load(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_example_site_loads() -> None:
    loaded = site.load(REPO / "kickstarts" / "site.yaml")
    (host,) = loaded.hosts
    assert host.hostname == "cdh-host.c7.jevoncode.com"
    assert host.selinux == "disabled" and not host.firewall.enabled
    (bridge,) = host.bridges
    assert bridge.name == "br0" and bridge.slaves == ("eth0",)
    assert bridge.address == ipaddress.IPv4Interface("192.168.1.108/16")
    assert bridge.gateway in bridge.address.network
    assert host.packages.environment == "virtualization-host-environment"


def test_defaults_merge_and_host_overrides(tmp_path: Path) -> None:
    loaded = site.load(write_site(tmp_path, BASE))
    first, second = loaded.hosts
    assert first.timezone == second.timezone == "Asia/Shanghai"
    assert first.selinux == "disabled" and second.selinux == "enforcing"
    assert second.firewall.services == ("ssh", "libvirt")
    assert [b.name for b in second.bridges] == ["br0", "br1"]
    assert second.bridges[1].address is not None and second.bridges[1].gateway is None


def test_host_disables_the_firewall_over_defaults_with_services(tmp_path: Path) -> None:
    """Issue 10 item 10: the inherited services go with the firewall; only services written
    next to `enabled: false` are a contradiction."""
    doc = site_doc()
    doc["defaults"]["firewall"] = {"enabled": True, "services": ["ssh", "libvirt"]}
    doc["hosts"][0]["firewall"] = {"enabled": False}
    host = site.load(write_site(tmp_path, doc)).hosts[0]
    assert not host.firewall.enabled and host.firewall.services == ()
    doc["hosts"][0]["firewall"] = {"enabled": False, "services": ["ssh"]}
    assert re.search(r"hosts\[0\]\.firewall\.services: services are opened only when the "
                     "firewall is enabled", load_error(tmp_path, doc))


def test_manual_recipe_gateway_is_refused_with_file_line_and_path(tmp_path: Path) -> None:
    doc = site_doc()
    doc["hosts"].append({"hostname": "bad.example.com",
                         "bridge": {"slaves": ["eth0"], "address": "192.168.1.109/16",
                                    "gateway": "192.16.1.1"}})
    message = load_error(tmp_path, doc)
    line = next(n for n, text in enumerate((tmp_path / "site.yaml").read_text().splitlines(), 1)
                if "192.16.1.1" in text)
    assert message == (f"{tmp_path / 'site.yaml'}:{line}: hosts[2].bridge.gateway: "
                       "192.16.1.1 is not inside 192.168.0.0/16")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["hosts"][1].update(hostname="CDH-HOST.c7.jevoncode.com"),
     r"hosts\[1\]: hostname cdh-host.c7.jevoncode.com is already used by hosts\[0\]"),
    (lambda d: d["hosts"][1].update(mac="52-54-00-12-34-56"),
     r"hosts\[1\]: mac 52:54:00:12:34:56 is already used by hosts\[0\]"),
    (lambda d: d["hosts"][1]["bridges"][1].update(address="192.168.1.108/24"),
     r"hosts\[1\]: address 192.168.1.108 is already used by hosts\[0\]"),
    (lambda d: d["hosts"][0].update(hostname="x;reboot"),
     r"hosts\[0\]\.hostname: 'x;reboot' is not a host name"),
    (lambda d: d["hosts"][0].update(hostname="-bad.example.com"),
     r"hosts\[0\]\.hostname: '-bad.example.com' is not a host name"),
    (lambda d: d["hosts"][0].update(hostname="a" * 64 + ".example.com"),
     r"hosts\[0\]\.hostname: .* label 'a+' must have 1 to 63 characters"),
    (lambda d: d["hosts"][0].update(mac="01:00:5e:00:00:01"),
     r"hosts\[0\]\.mac: .*multicast"),
    (lambda d: d["hosts"][0].update(mac="52:54:00:12:34"),
     r"hosts\[0\]\.mac: '52:54:00:12:34' is not a MAC address"),
    (lambda d: d["hosts"][0]["bridge"].update(dns=["192.168.1.1\nreboot"]),
     r"hosts\[0\]\.bridge\.dns\[0\]: .* is not an IPv4 address"),
    (lambda d: d["hosts"][0]["bridge"].update(address="192.168.1.300/16"),
     r"hosts\[0\]\.bridge\.address: '192.168.1.300/16' is not an IPv4 address/prefix"),
    (lambda d: d["hosts"][0]["bridge"].update(address="192.168.0.0/16"),
     r"hosts\[0\]\.bridge\.address: .*network or broadcast"),
    (lambda d: d["hosts"][0]["bridge"].update(gateway="192.168.1.108"),
     r"hosts\[0\]\.bridge\.gateway: 192.168.1.108 is the host's own address"),
    (lambda d: d["hosts"][0]["bridge"].update(slaves=["eth0", "br0"]),
     r"hosts\[0\]\.bridge: interface br0 is used twice"),
    (lambda d: d["hosts"][0]["bridge"].update(slaves=["eth0$(reboot)"]),
     r"hosts\[0\]\.bridge\.slaves\[0\]: .* is not an interface name"),
    (lambda d: d["hosts"][0]["bridge"].update(slaves=[]),
     r"hosts\[0\]\.bridge\.slaves: needs 1 to 16 items, has 0"),
    (lambda d: d["hosts"][0].update(bridges=[]),
     r"hosts\[0\]: give `bridge` or `bridges`, not both"),
    (lambda d: d["hosts"][1]["bridges"][1].update(gateway="10.2.0.1"),
     r"hosts\[1\]\.bridges\[1\]: only one bridge may carry the default gateway"),
    (lambda d: d["defaults"].update(selinux="off"),
     r"defaults\.selinux: 'off' is not one of enforcing, permissive, disabled"),
    (lambda d: d["defaults"].update(timezone="Asia/Shanghai'; reboot; '"),
     r"defaults\.timezone: .* is not a time zone"),
    (lambda d: d["defaults"].update(firewal={"enabled": True}),
     r"defaults\.firewal: unknown key"),
    (lambda d: d["defaults"]["firewall"].update(services=["ssh"]),
     r"defaults\.firewall\.services: services are opened only when the firewall is enabled"),
    (lambda d: d["defaults"].update(root_password_hash="changeme"),
     r"defaults\.root_password_hash: 'changeme' is not a SHA-512 crypt hash"),
    (lambda d: d["defaults"].update(root_password_env="KSBUILD_TEST_UNSET_VARIABLE"),
     r"give exactly one of root_password_hash or root_password_env \(found 2\)"),
    (lambda d: d["defaults"].update(source="ftp://example.com/x"),
     r"defaults\.source: 'ftp://example.com/x' is not 'cdrom' or an http\(s\) URL"),
    (lambda d: d["defaults"]["packages"].update(extra=["vim\n%pre"]),
     r"defaults\.packages\.extra\[0\]: .* is not a package name"),
    (lambda d: d["defaults"]["packages"].update(groups="base"),
     r"defaults\.packages\.groups: expected a list, got a string"),
    (lambda d: d["defaults"].update(firewall={"enabled": "no"}),
     r"defaults\.firewall\.enabled: expected true or false, got a string"),
    (lambda d: d.update(hosts=[]), r"hosts: needs at least one host"),
    (lambda d: d.update(hosts={"a": 1}), r"hosts: expected a list of hosts, got a mapping"),
    (lambda d: d.pop("hosts"), r"missing required key 'hosts'"),
    (lambda d: d["hosts"][0].pop("hostname"), r"hosts\[0\]: missing required key 'hostname'"),
    (lambda d: d["hosts"][0].update(storage={"partitions": [{"mount": "/boot", "size": 512}]}),
     r"hosts\[0\]\.storage: an explicit layout needs a / partition"),
    (lambda d: d.update(overlays="no-such-folder"), r"overlays: folder .* does not exist"),
])
def test_bad_values_give_one_line_naming_the_field(
        tmp_path: Path, change: Any, expected: str) -> None:
    doc = site_doc()
    change(doc)
    message = load_error(tmp_path, doc)
    assert re.match(rf"{re.escape(str(tmp_path / 'site.yaml'))}:\d+: ", message), message
    assert re.search(expected, message), message


@pytest.mark.parametrize(("text", "expected"), [
    ("hosts: [\n", r":2: YAML syntax error"),
    ("", r":1: the file is empty"),
    ("- a\n- b\n", r":1: : expected a mapping with `hosts:`"),
    ("hosts:\n  - hostname: a.example.com\n    hostname: b.example.com\n",
     r":3: hosts\[0\]: key 'hostname' given twice"),
    ("hosts:\n  - {hostname: a.example.com, 5: x}\n", r":2: hosts\[0\]: key 5 is not text"),
])
def test_yaml_problems(tmp_path: Path, text: str, expected: str) -> None:
    assert re.search(expected, load_error(tmp_path, text))


def _alias_bomb(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
              for i in range(1, levels + 1)]
    return "\n".join([*lines, f"hosts: *a{levels}", ""])


@pytest.mark.parametrize(("text", "expected"), [
    # 7 levels of 9 aliases in ~400 bytes: was 18 s and 1.3 GB; 9 levels never ended.
    (_alias_bomb(7), r":\d+: YAML aliases here expand to more than 100000 values"),
    (_alias_bomb(9), r":\d+: YAML aliases here expand to more than 100000 values"),
    ("a: &a [*a]\nhosts: []\n", r":1: a YAML alias refers to a value that contains it"),
    ("a: &a {b: *a}\nhosts: []\n", r":1: a YAML alias refers to a value that contains it"),
    ("a: &a {<<: *a}\nhosts: []\n", r":1: a YAML alias refers to a value that contains it"),
    ("hosts: " + "[" * 600 + "]" * 600 + "\n", r":1: nested more than 64 levels deep"),
    ("hosts:\n" + "".join("  " * i + "- \n" for i in range(1, 200)) + "\n",
     r":\d+: nested more than 64 levels deep"),
    ("hosts: !!int abc\n", r":1: hosts: 'abc' cannot be read as int"),
    ("hosts: !!bool maybe\n", r":1: hosts: 'maybe' cannot be read as bool"),
    ("hosts:\n  - hostname: !!timestamp 2020-13-45\n",
     r":2: hosts\[0\]\.hostname: '2020-13-45' cannot be read as timestamp"),
    ("hosts:\n  - hostname: !!timestamp abc\n",
     r":2: hosts\[0\]\.hostname: 'abc' cannot be read as timestamp"),
    ("hosts:\n  - {!!int x: 1}\n", r":2: hosts\[0\]: 'x' cannot be read as int"),
    ("# é\nhosts:\n\n  - hostname: a\x07b\n",
     r":4: YAML syntax error: control characters are not allowed \(character U\+0007\)"),
    ("hosts: [\x1b[31m]\n", r":1: YAML syntax error: .*U\+001B"),
])
def test_hostile_yaml_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    started = time.monotonic()
    assert re.search(expected, load_error(tmp_path, text))
    assert time.monotonic() - started < 2


def test_aliases_in_proportion_still_load(tmp_path: Path) -> None:
    """Anchors, aliases and merge keys are how a site shares a bridge or a block of values."""
    text = (f"defaults:\n  root_password_hash: '{HASH}'\n"
            "  bridge: &br {name: br0, slaves: [eth0, eth1, eth2]}\n"
            "hosts:\n  - {hostname: h0.example.com, firewall: &fw {enabled: false},\n"
            "     bridge: *br, packages: &pk {groups: [base, core], extra: [vim, tmux]}}\n"
            + "".join(f"  - {{hostname: h{i}.example.com, firewall: {{<<: *fw}}, bridge: *br,"
                      " packages: *pk}\n" for i in range(1, 2000)))
    loaded = site.load(write_site(tmp_path, text))
    assert len(loaded.hosts) == 2000
    assert {h.bridges[0].slaves for h in loaded.hosts} == {("eth0", "eth1", "eth2")}
    assert {h.packages.extra for h in loaded.hosts} == {("vim", "tmux")}
    assert not any(h.firewall.enabled for h in loaded.hosts)


def test_a_site_file_not_in_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(b"# caf\xc3\xa9\nhosts:\n  - hostname: caf\xe9\n")
    with pytest.raises(InputError, match=r"site\.yaml:3: not UTF-8 text \(byte 0xe9\)$"):
        site.load(path)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        site.load(tmp_path / "nope.yaml")


def test_root_password_env_is_read_at_load(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    doc = site_doc()
    del doc["defaults"]["root_password_hash"]
    doc["defaults"]["root_password_env"] = "KSBUILD_TEST_ROOT_PW"
    monkeypatch.delenv("KSBUILD_TEST_ROOT_PW", raising=False)
    assert "KSBUILD_TEST_ROOT_PW is not set" in load_error(tmp_path, doc)
    monkeypatch.setenv("KSBUILD_TEST_ROOT_PW", "s3cret")
    assert site.load(tmp_path / "site.yaml").hosts[0].root_password_env == "KSBUILD_TEST_ROOT_PW"


# ---------------------------------------------------------------------------------------------
# Generated bad site files: every one refused with one line and exit code 2 (see test_cli.py
# for the command-line side), and the shipped JSON Schema agreeing with the loader.

BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 70000), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["x", "name"]), st.integers(), max_size=1),
    st.sampled_from(["", " ", "x;reboot", "$(reboot)", "a\nb", "'", '"', "\\", "192.16.1.1",
                     "999.1.1.1/8", "br0 eth0", "%pre", "-", "--", "ÿ", "a" * 300]),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@st.composite
def mutated_sites(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["value", "unknown key", "duplicate host"]))
        if kind == "unknown key" and len(path) > 0:
            parent = path[:-1]
            target = doc
            for key in parent:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.sampled_from(["colour", "hostnme", "Bridge", "gateway2"]))] = 1
                continue
        hosts = doc.get("hosts")
        if kind == "duplicate host" and isinstance(hosts, list) and len(hosts) >= 2:
            hosts.append(copy.deepcopy(hosts[draw(st.integers(0, 1))]))
            continue
        try:
            _set(doc, path, draw(BAD_VALUES))
        except (TypeError, KeyError, IndexError):
            continue
    return doc


def _loader_accepts(path: Path) -> bool:
    try:
        site.load(path)
    except InputError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(f"{path}:"), message
        return False
    return True


SCHEMA = json.loads((REPO / "builder" / "site.schema.json").read_text())


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=mutated_sites())
def test_generated_bad_sites_refused_and_schema_agrees(tmp_path: Path,
                                                       doc: dict[str, Any]) -> None:
    path = write_site(tmp_path, doc)
    accepted = _loader_accepts(path)
    schema_ok = jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)
    # The schema sees structure and types only; the loader also checks meaning (subnets,
    # duplicates). So: whatever the loader accepts the schema accepts, and whatever the
    # schema refuses the loader refuses.
    if accepted:
        assert schema_ok, f"loader accepts what the schema refuses: {doc}"
    if not schema_ok:
        assert not accepted


# ---------------------------------------------------------------------------------------------
# Hostile YAML, generated: aliases, tags, nesting, control characters and stray bytes. Each
# file is loaded in a child process under a memory limit (RLIMIT_AS) and a time limit per
# file; it must load or be refused in one line, never crash, hang or exhaust memory.

CASE_SECONDS = 5.0  # a refused bomb takes ~0.1 s; before the fix one took 18 s, 1.3 GB
CASE_MEMORY = 1 << 30  # address space of the child; a 7-level bomb needed more
WORKER = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
from builder import site
from builder.errors import InputError
for line in sys.stdin:
    started = time.monotonic()
    try:
        site.load(line.strip())
        result = ["ok", ""]
    except InputError as exc:
        result = ["refused", str(exc)]
    except MemoryError:
        result = ["memory", ""]
    except BaseException as exc:
        result = ["crash", repr(exc)[:300]]
    result.append(time.monotonic() - started)
    print(json.dumps(result), flush=True)
"""


class LoaderChild:
    """A child process that loads site files, one per line of its stdin, and answers each with
    its outcome; the parent waits CASE_SECONDS at most for each answer."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(CASE_MEMORY)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def load(self, path: Path) -> tuple[str, str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], CASE_SECONDS)
        if not ready:
            self.close()
            pytest.fail(f"loading {path} took more than {CASE_SECONDS} s: "
                        f"{path.read_bytes()[:300]!r}")
        line = self.proc.stdout.readline()
        assert line, f"the loader process died on {path.read_bytes()[:300]!r}"
        outcome, message, seconds = json.loads(line)
        return outcome, message, seconds

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def loader_child() -> Iterator[LoaderChild]:
    child = LoaderChild()
    yield child
    child.close()


SITE_TEXT = yaml.safe_dump(BASE, sort_keys=False)
TAGS = ["!!int abc", "!!int 0x", "!!int 99999999999999999999999", "!!float x", "!!float 1e99999",
        "!!timestamp 2020-99-99", "!!timestamp abc", "!!binary '@@@'", "!!bool maybe",
        "!!null x", "!!str 5", "!!python/object:os.system x", "!!python/name:os.system ''",
        "!custom x", "!!set {a: 1}", "!!omap [a]", "!!pairs [[a, b]]", "!!merge x", "!!seq x",
        "!!map x", "!<tag:yaml.org,2002:int> z", "!!int [1, 2]", "!!timestamp {a: 1}"]


@st.composite
def hostile_yaml(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bomb", "self", "tag", "nesting", "control", "bytes",
                                 "garbage"]))
    lines = SITE_TEXT.splitlines()
    if kind == "bomb":
        levels, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        bomb = _alias_bomb(levels, width).splitlines()[:-2]
        where = draw(st.sampled_from(["hosts", "defaults", "pxe", "media"]))
        text = "\n".join(bomb + [f"{where}: *a{levels}"] +
                         [line for line in lines if not line.startswith(where + ":")])
    elif kind == "self":
        text = draw(st.sampled_from([
            "a: &a [*a]", "a: &a {b: *a}", "a: &a {<<: *a}", "a: &a [[[[*a]]]]",
            "a: &a {b: [c, {d: *a}]}", "a: &a [x, &b [y, *a, *b]]", "hosts: &h [*h, *h]",
        ])) + "\n" + SITE_TEXT
    elif kind == "tag":
        index = draw(st.integers(0, len(lines) - 1))
        key = lines[index].split(":", 1)[0] if ":" in lines[index] else "  - x"
        lines[index] = f"{key}: {draw(st.sampled_from(TAGS))}"
        text = "\n".join(lines)
    elif kind == "nesting":
        depth = draw(st.integers(1, 3000))
        style = draw(st.sampled_from(["flow list", "flow map", "block"]))
        if style == "flow list":
            value = "[" * depth + "]" * depth
        elif style == "flow map":
            value = "{a: " * depth + "1" + "}" * depth
        else:
            value = "\n" + "".join("  " * (i + 1) + "- \n" for i in range(min(depth, 400)))
        text = f"{SITE_TEXT}pxe: {value}\n"
    elif kind == "control":
        position = draw(st.integers(0, len(SITE_TEXT)))
        char = draw(st.sampled_from([chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32),
                                                      127, *range(0x80, 0xA0), 0xFFFE,
                                                      0xFFFF]]))
        text = SITE_TEXT[:position] + char + SITE_TEXT[position:]
    elif kind == "bytes":
        data = SITE_TEXT.encode()
        position = draw(st.integers(0, len(data)))
        return data[:position] + draw(st.binary(min_size=1, max_size=4)) + data[position:]
    else:
        text = draw(st.text(alphabet=st.sampled_from(list("[]{}&*!:,-?|># %@`'\"\nab01")),
                            max_size=300))
    return text.encode("utf-8")


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=hostile_yaml())
def test_hostile_yaml_loads_or_is_refused_in_bounded_time_and_memory(
        tmp_path: Path, loader_child: LoaderChild, data: bytes) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(data)
    outcome, message, _seconds = loader_child.load(path)
    assert outcome in ("ok", "refused"), (outcome, message, data[:300])
    if outcome == "refused":
        assert "\n" not in message and message.startswith(f"{path}:"), message


def test_the_fuzz_bounds_catch_a_bomb_and_a_crash(tmp_path: Path,
                                                  loader_child: LoaderChild) -> None:
    """The harness itself: a loader that crashes or eats memory is reported, not missed."""
    path = tmp_path / "missing-dir" / "site.yaml"
    outcome, message, _ = loader_child.load(path)
    assert outcome == "refused" and "no such file" in message
    child = subprocess.run([sys.executable, "-c", WORKER.replace("site.load(line.strip())",
                                                                 "bytearray(2 << 30)"),
                            str(CASE_MEMORY)], input="x\n", capture_output=True, text=True,
                           cwd=REPO, timeout=60)
    assert json.loads(child.stdout)[0] == "memory"


def test_shipped_schema_is_generated_from_the_grammar() -> None:
    shipped = (REPO / "builder" / "site.schema.json").read_text()
    assert shipped == site.schema_text(), "run: ksbuild schema > builder/site.schema.json"


def test_schema_accepts_the_examples() -> None:
    import yaml

    validator = jsonschema.Draft202012Validator(SCHEMA)
    for name in ("site.yaml", "fleet.yaml"):
        validator.validate(yaml.safe_load((REPO / "kickstarts" / name).read_text()))
    validator.validate(BASE)
