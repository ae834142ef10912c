"""The PXE tree: layout and entries, GRUB command choice, reproducibility, errors, and the
install-once state (done, rebuild, --reinstall, nginx's done log, the lock)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder import kickstart, site
from builder.pxe import grubimage, serve
from builder.pxe import menus as pxemenus
from builder.pxe import state as pxestate
from builder.pxe import tree as pxe
from builder.run import run
from tests.conftest import REPO
from tests.fixtures.grub import CENTOS_MODULES
from tests.pxe_support import (
    GUEST_SERVER,
    HOSTS,
    build,
    grub_image,
    host_dicts,
    small_base_iso,
    tree_digest,
    write_site,
)

PXE_KEY = {"server": GUEST_SERVER, "menu_timeout": 2}
H1, MAC1, _ = HOSTS[0]
H2, MAC2, _ = HOSTS[1]


def ksbuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    build(write_site(tmp_path, PXE_KEY), tmp_path / "pxe")
    return tmp_path / "pxe"


def entries(tree: Path, mac: str) -> dict[str, str]:
    return {kind: (tree / path).read_text() for kind, path in pxemenus.host_files(mac).items()}


def is_local(tree: Path, mac: str) -> bool:
    texts = entries(tree, mac)
    local = ["localboot 0" in texts["pxelinux"], "chainloader" in texts["grub"],
             "kernel" not in texts["ipxe"]]
    assert len(set(local)) == 1, f"entries of {mac} disagree: {texts}"
    return local[0]


# ---------------------------------------------------------------------------------------------
# The tree.


def test_tree_has_every_loader_entry_and_kickstart(tree: Path) -> None:
    for name in ("pxelinux.0", "ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32",
                 "BOOTX64.EFI", "grubx64.efi", "grub.cfg", "boot.ipxe", "pxelinux.cfg/default",
                 "images/vmlinuz", "images/initrd.img"):
        assert (tree / "tftp" / name).is_file(), name
    assert (tree / "tftp/images/vmlinuz").read_bytes() == b"test vmlinuz\n" * 1000
    for name in ("vmlinuz", "initrd.img"):  # the same file for HTTP
        assert (tree / "http/images" / name).samefile(tree / "tftp/images" / name)
    assert (tree / "tftp/pxelinux.0").read_bytes() == Path(
        "/usr/lib/PXELINUX/pxelinux.0").read_bytes()
    for hostname, mac, _address in HOSTS:
        texts = entries(tree, mac)
        ks_url = f"inst.ks={GUEST_SERVER}/ks/{hostname}.cfg"
        bootif = f"BOOTIF=01-{mac.replace(':', '-')}"
        for kind, text in texts.items():
            assert ks_url in text and bootif in text, (kind, text)
            assert f"inst.repo={GUEST_SERVER}/os/" in text and "inst.ks.sendmac" in text
        assert "append initrd=images/initrd.img " in texts["pxelinux"]
        # iPXE and GRUB fetch kernel and initrd over HTTP; pxelinux (above) over TFTP.
        assert re.search(r"^\s+linuxefi \(http,10\.0\.2\.100\)/images/vmlinuz ",
                         texts["grub"], re.M)
        assert f"\nkernel {GUEST_SERVER}/images/vmlinuz " in texts["ipxe"]
        assert f"\ninitrd {GUEST_SERVER}/images/initrd.img\n" in texts["ipxe"]
        assert texts["ipxe"].startswith("#!ipxe\n")
        ks = (tree / f"http/ks/{hostname}.cfg").read_text()
        assert f"done_url={GUEST_SERVER}/done/{hostname}\n" in ks
        # PXE installs reboot (issue 10 item 5): the done step switches them to local boot.
        assert "\nreboot --eject\n" in ks and "\npoweroff" not in ks
        assert not is_local(tree, mac)
    # Only the per-host files and the fallbacks: nothing for a MAC not in the site.
    assert sorted(p.name for p in (tree / "tftp/pxelinux.cfg").iterdir()) == [
        "01-52-54-00-12-34-56", "01-52-54-00-12-34-57", "default"]
    default = (tree / "tftp/pxelinux.cfg/default").read_text()
    assert "ontimeout local" in default and "timeout 20\n" in default
    assert "localboot 0" in default and "kernel" not in default
    index = json.loads((tree / "hosts.json").read_text())
    assert index["server"] == GUEST_SERVER
    assert {n: h["mac"] for n, h in index["hosts"].items()} == {H1: MAC1, H2: MAC2}


def test_kickstarts_are_the_sites_with_the_done_step(tree: Path, tmp_path: Path) -> None:
    loaded = site.load(tmp_path / "site.yaml")
    renderer = kickstart.Renderer(loaded)
    for host in loaded.hosts:
        expected = renderer.render_host(host, {
            "pxe_done_url": f"{GUEST_SERVER}/done/{host.hostname}",
            "pxe_events_url": f"{GUEST_SERVER}/events/{host.hostname}"})
        assert (tree / f"http/ks/{host.hostname}.cfg").read_text() == expected
        # Only PXE installs report (done, %pre, %onerror, the first-boot unit).
        plain = renderer.render_host(host)
        assert "step=pxe_done" not in plain and "/events/" not in plain
        for section in ("%pre", "%onerror", "step=firstboot"):
            assert section not in plain and section in expected, section


def test_install_tree_replaces_each_hosts_source(tmp_path: Path) -> None:
    hosts = host_dicts()
    hosts[0]["source"] = "cdrom"  # an ISO-only setting; the PXE tree must not keep it
    path = write_site(tmp_path, {**PXE_KEY, "install_tree": "http://mirror.example/c7/"},
                      hosts=hosts)
    build(path, tmp_path / "pxe")
    for hostname, mac, _address in HOSTS:
        assert "inst.repo=http://mirror.example/c7/ " in entries(tmp_path / "pxe", mac)["ipxe"]
        ks = (tmp_path / f"pxe/http/ks/{hostname}.cfg").read_text()
        assert "\nurl --url=http://mirror.example/c7/\n" in ks and "\ncdrom\n" not in ks


def test_server_option_wins_and_boot_args_are_added(tmp_path: Path) -> None:
    path = write_site(tmp_path, {**PXE_KEY, "boot_args": ["console=ttyS0,115200n8"]})
    build(path, tmp_path / "pxe", server="http://192.0.2.7:8080/")
    text = entries(tmp_path / "pxe", MAC1)["pxelinux"]
    assert "inst.ks=http://192.0.2.7:8080/ks/kvm01.example.com.cfg " in text
    assert text.rstrip().endswith(" console=ttyS0,115200n8")
    nginx = (tmp_path / "pxe/nginx.conf").read_text()
    assert "listen 192.0.2.7:8080;" in nginx


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    """Two builds in other folders, umasks and time zones: the same files, modes and bytes."""
    pxe_key = {**PXE_KEY, "tree_path": "/srv/ksbuild/pxe"}
    path = write_site(tmp_path, pxe_key)
    results = []
    for number, (umask, zone) in enumerate(((0o022, "UTC"), (0o077, "Asia/Shanghai"))):
        old_umask = os.umask(umask)
        old_tz = os.environ.get("TZ")
        os.environ["TZ"] = zone
        time.tzset()
        try:
            build(path, tmp_path / f"out{number}" / "pxe", jobs=1)
        finally:
            os.umask(old_umask)
            os.environ.pop("TZ") if old_tz is None else os.environ.update(TZ=old_tz)
            time.tzset()
        results.append(tree_digest(tmp_path / f"out{number}" / "pxe"))
    assert results[0] == results[1]
    assert results[0]["tftp/pxelinux.cfg/default"][0] & 0o777 == 0o644
    assert results[0]["tftp/ipxe"][0] & 0o777 == 0o755
    assert "tftp-root=/srv/ksbuild/pxe/tftp\n" in (tmp_path / "out0/pxe/dnsmasq.conf").read_text()


def test_a_fleet_renders_in_parallel_the_same(tmp_path: Path) -> None:
    count = kickstart.PARALLEL_MIN_HOSTS + 20  # enough for the worker pool
    many = [(f"n{i:03d}.example.com", f"52:54:01:00:00:{i:02x}", f"10.0.2.{i + 10}")
            for i in range(count)]
    path = write_site(tmp_path, {**PXE_KEY, "tree_path": "/srv/pxe"},
                      hosts=host_dicts(tuple(many)))
    build(path, tmp_path / "one", jobs=1)
    build(path, tmp_path / "two", jobs=2)
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")
    assert len(list((tmp_path / "one/http/ks").iterdir())) == count


# ---------------------------------------------------------------------------------------------
# GRUB: linuxefi or linux, by the GRUB the tree ships.


def test_grub_commands_follow_the_shipped_grub(tmp_path: Path) -> None:
    upstream = grub_image("upstream")
    centos = grub_image("centos")
    # Debian's `linux` module names linuxefi in a message: a byte search would be fooled.
    assert b"linuxefi" in upstream.read_bytes()
    assert not grubimage.has_linuxefi(upstream.read_bytes())
    assert grubimage.has_linuxefi(centos.read_bytes())
    names = grubimage.module_names(upstream.read_bytes())
    assert names is not None and {"linux", "tftp", "efinet", "minicmd"} <= set(names)
    for name, grub, given, expected in (("a", upstream, "auto", "linux"),
                                        ("b", centos, "auto", "linuxefi"),
                                        ("c", centos, "linux", "linux")):
        path = write_site(tmp_path / name, {**PXE_KEY, "grub": str(grub),
                                            "grub_commands": given})
        result = build(path, tmp_path / name / "pxe")
        assert result.grub_commands == expected
        text = entries(tmp_path / name / "pxe", MAC1)["grub"]
        assert re.search(rf"^\s+{expected} \(http,10.0.2.100\)/images/vmlinuz ", text, re.M)
        initrd = "initrdefi" if expected == "linuxefi" else "initrd"
        assert re.search(rf"^\s+{initrd} \(http,10.0.2.100\)/images/initrd.img$", text, re.M)
        assert (tmp_path / name / "pxe/tftp/grubx64.efi").read_bytes() == grub.read_bytes()


def test_grub_fetches_over_tftp_when_the_server_is_not_on_port_80(tmp_path: Path) -> None:
    # CentOS 7's GRUB (2.02) connects to port 80 only; iPXE takes any port.
    build(write_site(tmp_path, {"server": "http://10.0.2.100:8080"}), tmp_path / "pxe")
    texts = entries(tmp_path / "pxe", MAC1)
    assert re.search(r"^\s+linuxefi /images/vmlinuz ", texts["grub"], re.M)
    assert "\nkernel http://10.0.2.100:8080/images/vmlinuz " in texts["ipxe"]


def test_module_names_of_something_else() -> None:
    assert grubimage.module_names(b"no module area here") is None
    assert grubimage.has_linuxefi(b"...initrdefi\0...") is True
    assert grubimage.has_linuxefi(b"...linuxefi\0...") is False


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written.


@pytest.mark.parametrize("change, message", [
    (lambda d: d["hosts"][1].pop("mac"), "host kvm02.example.com has no mac"),
    (lambda d: d.pop("pxe"), "needs the boot server's URL"),
    (lambda d: d["defaults"].update(source="cdrom"), "installs from cdrom"),
    (lambda d: d["pxe"].update(server="http://x.example/pxe/"), "pxe.server"),
    (lambda d: d["pxe"].update(dhcp={"subnet": "10.0.2.0/24", "interface": "eth1", "range": {
        "start": "10.0.3.1", "end": "10.0.3.9"}}), "pxe.dhcp.range.start: 10.0.3.1 is not inside"),
    # Issue 10 item 4: CentOS 7.9's GRUB reads no proxy-DHCP offers.
    (lambda d: d["pxe"].update(dhcp={"mode": "proxy", "subnet": "10.0.2.0/24", "interface": "e1"}),
     "pxe.dhcp.mode: proxy DHCP cannot boot UEFI machines: CentOS 7's GRUB reads its TFTP server"),
    (lambda d: d["pxe"].update(dhcp={"subnet": "10.0.9.0/24", "interface": "eth1"}),
     "host kvm01.example.com has no static address in 10.0.9.0/24"),
    (lambda d: d["pxe"].update(dhcp={"subnet": "10.0.2.0/24"}),
     "pxe.dhcp: missing required key 'interface'"),
    (lambda d: d["pxe"].update(dhcp={"subnet": "10.0.2.1/24", "interface": "eth1"}),
     "pxe.dhcp.subnet: '10.0.2.1/24' is not an IPv4 network"),
    (lambda d: d["pxe"].update(grub_commands="linux16"), "pxe.grub_commands"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, change, message: str) -> None:
    import yaml

    path = write_site(tmp_path, dict(PXE_KEY))
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    done = ksbuild("pxe", str(path), "--base", str(small_base_iso()), "-o",
                   str(tmp_path / "pxe"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pxe").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pxe")] in (
        [], [".pxe.lock"])


def test_unknown_reinstall_host_and_missing_tree(tmp_path: Path, tree: Path) -> None:
    done = ksbuild("pxe", str(tmp_path / "site.yaml"), "--base", str(small_base_iso()),
                   "-o", str(tree), "--reinstall", "nope.example.com")
    assert done.returncode == 2 and "no host named 'nope.example.com'" in done.stderr
    done = ksbuild("pxe", "-o", str(tmp_path / "nothing"), "--done", H1)
    assert done.returncode == 2 and "not a ksbuild PXE tree" in done.stderr
    done = ksbuild("pxe", "-o", str(tree), "--done", "nope.example.com")
    assert done.returncode == 2 and "no host named 'nope.example.com'" in done.stderr


# ---------------------------------------------------------------------------------------------
# Install once.


def test_done_switches_only_that_host_and_a_rebuild_keeps_it(tree: Path, tmp_path: Path) -> None:
    install_texts = entries(tree, MAC1)
    assert pxestate.set_installed(tree, H1, True, note="test") is True
    assert is_local(tree, MAC1) and not is_local(tree, MAC2)
    assert (tree / "state/installed" / H1).read_text() == "installed: test\n"
    assert pxestate.set_installed(tree, H1, True) is False  # already

    # A rebuild (here with another menu timeout) starts from install entries but keeps H1's.
    write_site(tmp_path, {**PXE_KEY, "menu_timeout": 3})
    result = build(tmp_path / "site.yaml", tree)
    assert result.installed == [H1]
    assert is_local(tree, MAC1) and not is_local(tree, MAC2)
    assert (tree / "state/installed" / H1).read_text() == "installed: test\n"

    result = build(tmp_path / "site.yaml", tree, reinstall=(H1.upper(),))
    assert result.reinstalled == [H1] and result.installed == []
    assert not is_local(tree, MAC1)
    assert entries(tree, MAC1) == install_texts
    assert not (tree / "state/installed" / H1).exists()


def test_a_rebuild_with_nothing_changed_keeps_every_file(tree: Path, tmp_path: Path) -> None:
    """`ksbuild pxe` again over its own tree, which has no recorded hashes: each file with
    the same bytes is a hard link to the previous one, not written again."""
    def inodes() -> dict[Path, int]:
        return {p.relative_to(tree): p.stat().st_ino for p in tree.rglob("*")
                if p.is_file() and "state" not in p.relative_to(tree).parts}

    before = inodes()
    build(tmp_path / "site.yaml", tree)
    assert inodes() == before


# hosts.json of a rebuild: the previous tree's, with the lines of the hosts not reused spliced
# in (state.splice_index), byte for byte the file a clean build writes.

FIVE = tuple((f"kvm{n}.example.com", f"52:54:00:12:34:{n:02x}", f"10.0.2.{n + 20}")
             for n in (1, 3, 5, 7, 9))
INDEX_EDITS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "nothing": lambda hosts: None,
    "host changed": lambda hosts: hosts[2].update(nic_names="eth"),  # its boot args change
    "host added first": lambda hosts: hosts.insert(0, host_dicts(
        (("kvm0.example.com", "52:54:00:12:34:a0", "10.0.2.40"),))[0]),
    "host added between": lambda hosts: hosts.append(host_dicts(
        (("kvm4.example.com", "52:54:00:12:34:a4", "10.0.2.44"),))[0]),
    "host added last": lambda hosts: hosts.append(host_dicts(
        (("kvm99.example.com", "52:54:00:12:34:a9", "10.0.2.49"),))[0]),
    "first host removed": lambda hosts: hosts.pop(0),
    "last host removed": lambda hosts: hosts.pop(),
    "every host removed but one": lambda hosts: hosts.__delitem__(slice(1, None)),
    "host renamed": lambda hosts: hosts[1].update(hostname="kvm8.example.com"),
    "MAC changed": lambda hosts: hosts[3].update(mac="52:54:00:12:34:ee"),
    "all changed": lambda hosts: [host.update(nic_names="eth") for host in hosts],
}


def rebuild_reusing(tmp_path: Path, edit: Callable[[list[dict[str, Any]]], None]
                    ) -> tuple[Path, Path]:
    """A tree of FIVE rebuilt after `edit`, reusing the hosts it left as they were (as
    `ksbuild build` does), and a clean build of the edited site."""
    pxe_key = {**PXE_KEY, "tree_path": "/srv/pxe"}
    hosts = host_dicts(FIVE)
    build(write_site(tmp_path / "a", pxe_key, hosts=hosts), tmp_path / "pxe")
    edited = copy.deepcopy(hosts)
    edit(edited)
    path = write_site(tmp_path / "b", pxe_key, hosts=edited)
    reused = frozenset(host["hostname"] for host in edited if host in hosts)
    build(path, tmp_path / "pxe", reuse_hosts=reused)
    build(path, tmp_path / "clean")
    return tmp_path / "pxe", tmp_path / "clean"


@pytest.mark.parametrize("edit", list(INDEX_EDITS))
def test_a_rebuilds_spliced_index_is_a_clean_builds(tmp_path: Path, edit: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spliced: list[bytes | None] = []
    original = pxestate.splice_index

    def splice(*args: Any) -> bytes | None:
        spliced.append(original(*args))
        return spliced[-1]

    monkeypatch.setattr(pxestate, "splice_index", splice)
    mine, clean = rebuild_reusing(tmp_path, INDEX_EDITS[edit])
    assert (mine / pxestate.INDEX).read_bytes() == (clean / pxestate.INDEX).read_bytes()
    assert tree_digest(mine) == tree_digest(clean)
    reused = edit != "all changed"
    assert [data is not None for data in spliced] == [True] * reused  # not the fallback


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "truncated", "no tail",
                                    "a line lost", "unsorted", "a comma lost", "quoted name"])
def test_a_damaged_previous_index_is_rebuilt_from_every_host(tmp_path: Path, damage: str,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """When the previous tree's hosts.json is not as the tree writer wrote it, the reused
    hosts' lines are rendered again: the index is still a clean build's."""
    original = pxe.start_tree

    def damaged(options: pxe.Options, *args: Any) -> pxe.Started:
        if not options.reuse_hosts or options.previous is None:  # not the rebuild
            return original(options, *args)
        index = options.previous / pxestate.INDEX
        data = index.read_bytes()
        lines = data.split(b"\n")
        index.unlink()  # a new file: the old tree's may be hard-linked elsewhere
        if damage != "missing":
            index.write_bytes({
                "empty": b"", "garbage": b"garbage\n", "truncated": data[:len(data) // 2],
                "no tail": data[:-3], "a line lost": b"\n".join(lines[:2] + lines[3:]),
                "unsorted": b"\n".join([lines[0], lines[2], lines[1], *lines[3:]]),
                "a comma lost": data.replace(b",\n", b"\n", 1),
                "quoted name": data.replace(b'\n"kvm5', b'\n"kvm\\u0035', 1),
            }[damage])
        return original(options, *args)

    monkeypatch.setattr(pxe, "start_tree", damaged)
    mine, clean = rebuild_reusing(tmp_path, INDEX_EDITS["MAC changed"])
    assert (mine / pxestate.INDEX).read_bytes() == (clean / pxestate.INDEX).read_bytes()


def test_splice_index_is_index_from_lines() -> None:
    """Every way the hosts of an index can go, come, change or stay, at its start, middle
    and end, from and to an empty one."""
    def line(name: str, mac: str) -> bytes:
        return pxestate.index_line(pxestate.IndexedHost(name, mac, {"tftp/x": "a\nb \"c\""}))

    names = ["a.example.com", "b.example.com", "c.example.com", "d.example.com"]
    old_lines = {name: line(name, "1") for name in names}
    for bits in range(3 ** len(names)):  # each old host gone, kept or changed
        fate = [bits // 3 ** k % 3 for k in range(len(names))]
        for added in ([], ["0.example.com"], ["bb.example.com", "zz.example.com"]):
            kept = frozenset(n for n, f in zip(names, fate) if f == 1)
            lines = {**{n: line(n, "2") for n, f in zip(names, fate) if f == 2},
                     **{n: line(n, "3") for n in added}}
            for old in (pxestate.index_from_lines("http://a", old_lines),
                        pxestate.index_from_lines("http://b", old_lines)):
                full = pxestate.index_from_lines("http://a", {
                    **{n: old_lines[n] for n in kept}, **lines})
                spliced = pxestate.splice_index(old, "http://a", kept, lines)
                assert spliced == full, (fate, added)
                assert (spliced is old) == (old == full)
    empty = pxestate.index_from_lines("http://a", {})
    assert pxestate.splice_index(empty, "http://a", frozenset(), {}) is empty
    assert pxestate.splice_index(empty, "http://a", frozenset(), old_lines) == \
        pxestate.index_from_lines("http://a", old_lines)
    assert pxestate.splice_index(empty, "http://a", frozenset(names[:1]), {}) is None


def test_a_tree_keeps_its_templates_compiled_and_renders_the_same(tmp_path: Path) -> None:
    """With a folder for compiled templates (`ksbuild build`'s OUT/.ksbuild/templates), the
    tree's templates are compiled once, and render what they render without it."""
    path = write_site(tmp_path, {**PXE_KEY, "tree_path": "/srv/pxe"})
    compiled = tmp_path / "compiled"
    build(path, tmp_path / "plain")
    build(path, tmp_path / "first", compiled=compiled)
    files = sorted(kickstart.CompiledTemplates.folder(compiled).iterdir())
    assert len(files) == len(list((kickstart.template_dir() / "pxe").glob("*.j2")))  # all
    build(path, tmp_path / "again", compiled=compiled)
    assert sorted(kickstart.CompiledTemplates.folder(compiled).iterdir()) == files
    assert tree_digest(tmp_path / "plain") == tree_digest(tmp_path / "first") == \
        tree_digest(tmp_path / "again")


def test_hosts_files_are_each_hosts_host_files() -> None:
    macs = ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]
    assert sorted(pxemenus.hosts_files(macs, "pxe/")) == sorted(
        f"pxe/{path}" for mac in macs for path in pxemenus.host_files(mac).values())
    assert pxemenus.hosts_files(macs)[1::2] == [pxemenus.host_files(macs[1])[kind]
                                                for kind in pxemenus.HOST_FILES]


def test_done_and_reinstall_from_the_command_line(tree: Path) -> None:
    done = ksbuild("pxe", "-o", str(tree), "--done", H2)
    assert done.returncode == 0, done.stderr
    assert f"{H2}: boots from its disk" in done.stderr
    assert is_local(tree, MAC2)
    done = ksbuild("pxe", "-o", str(tree), "--reinstall", H2)
    assert done.returncode == 0 and f"{H2}: installs on its next network boot" in done.stderr
    assert not is_local(tree, MAC2)


def test_a_host_reporting_during_a_rebuild_is_not_lost(tree: Path, tmp_path: Path) -> None:
    """The rebuild takes the tree's lock to read who has installed and to rename the new tree
    into place; a report that holds the lock first is carried into the new tree."""
    holder = pxestate.TreeLock(tree)
    holder.acquire()
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            build(tmp_path / "site.yaml", tree)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    worker = threading.Thread(target=rebuild)
    worker.start()
    deadline = time.monotonic() + 120
    # The new version is written beside the current one...
    while len(list(tmp_path.glob(".pxe.*.v/hosts.json"))) < 2:
        assert time.monotonic() < deadline and worker.is_alive(), errors
        time.sleep(0.05)
    time.sleep(0.3)
    assert worker.is_alive()  # ...and waits for the lock
    # What `ksbuild serve` does for a done report, while it holds the lock:
    (tree / "state/installed" / H2).write_text("installed: during the rebuild\n")
    pxestate.write_entries(tree, pxemenus.local_entries(H2, MAC2))
    holder.release()
    worker.join(120)
    assert not errors and not worker.is_alive()
    assert is_local(tree, MAC2) and not is_local(tree, MAC1)


def test_nginx_done_log_switches_each_reported_host_once(tree: Path, tmp_path: Path) -> None:
    log = tmp_path / "ksbuild-done.log"
    log.write_text(f"2024-05-01T10:00:00+00:00 10.0.2.15 {H1}\n"
                   "2024-05-01T10:00:01+00:00 10.0.2.99 stranger.example.com\n"
                   f"2024-05-01T10:00:02+00:00 10.0.2.16 {H2}")  # no newline: still written
    lines = pxe.apply_done_log(tree, log)
    assert lines == [f"{H1}: boots from its disk", "stranger.example.com: not in this PXE tree "
                                                   "(ignored)"]
    assert is_local(tree, MAC1) and not is_local(tree, MAC2)
    assert "reported by 10.0.2.15 at 2024-05-01T10:00:00" in (
        tree / "state/installed" / H1).read_text()

    pxe.switch(tree, reinstall=[H1])
    with log.open("a") as more:
        more.write("\n")
    assert pxe.apply_done_log(tree, log) == [f"{H2}: boots from its disk"]
    assert not is_local(tree, MAC1)  # the old line did not switch it back to local

    # A rebuild keeps the position; a rotated log is read from its start.
    build(tmp_path / "site.yaml", tree)
    assert pxe.apply_done_log(tree, log) == []
    log.unlink()
    log.write_text(f"2024-05-02T00:00:00+00:00 10.0.2.15 {H1}\n")
    assert pxe.apply_done_log(tree, log) == [f"{H1}: boots from its disk"]


# ---------------------------------------------------------------------------------------------
# The %post step that reports the install.


def pxe_done_step(kickstart_text: str) -> str:
    found = re.search(r"^step=pxe_done\n.*?^\(\n(.*?)^\)\n", kickstart_text, re.M | re.S)
    assert found, "no pxe_done step in the kickstart"
    return found.group(1)


def test_post_step_reports_the_install_to_ksbuild_serve(tree: Path, tmp_path: Path) -> None:
    server = serve.start(tree, "127.0.0.1:0", lambda line: None)
    thread = serve.run_in_thread(server)
    try:
        url = f"{serve.url_of(server)}done/{H1}"
        loaded = site.load(tmp_path / "site.yaml")
        text = kickstart.Renderer(loaded).render_host(loaded.host(H1), {"pxe_done_url": url})
        step = pxe_done_step(text)
        script = tmp_path / "step.sh"
        script.write_text("set -euo pipefail\n(\n" + step + ")\n")
        lint = run(["shellcheck", "--shell=bash", "--severity=style", script], check=False)
        assert lint.returncode == 0, lint.stdout.decode()
        done = run(["bash", script], timeout=60)
        assert f"told the boot server: {url}" in done.stdout.decode()
        assert is_local(tree, MAC1) and not is_local(tree, MAC2)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_post_step_only_warns_when_the_server_is_unreachable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as unused:  # a loopback port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    loaded = site.load(write_site(tmp_path, PXE_KEY))
    url = f"http://127.0.0.1:{port}/done/{H1}"
    text = kickstart.Renderer(loaded).render_host(loaded.hosts[0], {"pxe_done_url": url})
    script = tmp_path / "step.sh"
    script.write_text("set -euo pipefail\n(\n" + pxe_done_step(text) + ")\necho AFTER\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sleep").write_text("#!/bin/sh\nexit 0\n")  # the pauses between tries, skipped
    (fake / "sleep").chmod(0o755)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("AFTER")
    assert done.stderr.count("did not answer") == 5
    assert f"warning: could not reach {url}" in done.stderr


# ---------------------------------------------------------------------------------------------
# CentOS 7's GRUB 2.02 (issue 10 items 6, 7)

# GRUB's own commands, in its kernel (no module); everything else comes from a module.
GRUB_CORE_COMMANDS = {"set", "unset", "insmod"}
GRUB_SCRIPT_WORDS = {"if", "then", "else", "elif", "fi", "{", "}"}
COMMAND_LIST = Path("/usr/lib/grub/x86_64-efi/command.lst")


def grub_commands_used(text: str) -> set[str]:
    """The commands a GRUB script runs: the first word of each line, and the word after `if`."""
    used = set()
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] in ("if", "elif") and len(words) > 1:
            used.add(words[1])
        elif words[0] not in GRUB_SCRIPT_WORDS:
            used.add(words[0])
    return used


def module_of_command() -> dict[str, str]:
    """GRUB's command -> module table, from the installed GRUB (grub-efi-amd64-bin)."""
    table = {}
    for line in COMMAND_LIST.read_text().splitlines():
        command, _, module = line.partition(":")
        table[command.lstrip("*")] = module.strip()
    return table


def grub_files(tree: Path) -> dict[str, str]:
    local = pxemenus.local_entries(HOSTS[0][0], HOSTS[0][1])
    files = {"tftp/grub.cfg": (tree / "tftp/grub.cfg").read_text()}
    files.update({path: (tree / path).read_text() for path in
                  (pxemenus.host_files(mac)["grub"] for _name, mac, _address in HOSTS)})
    files.update({f"{path} (local)": text for path, text in local.items() if "grub" in path})
    return files


def commands_centos_grub_lacks(texts: dict[str, str]) -> list[str]:
    modules = module_of_command()
    return sorted(f"{name}: {command} (module {modules.get(command, '?')})"
                  for name, text in texts.items() for command in grub_commands_used(text)
                  if command not in GRUB_CORE_COMMANDS
                  and modules.get(command) not in CENTOS_MODULES)


def test_grub_files_use_only_commands_centos_grub_has(tree: Path) -> None:
    """CentOS 7.9's grubx64.efi has 77 built-in modules and loads none from the network; an
    unknown command there is an error that an `if` takes as true (it once sent every machine to
    a $prefix path). The check can fail: the old lookup by `regexp` is caught."""
    texts = grub_files(tree)
    assert "tftp/grub.cfg-01-52-54-00-12-34-57" in texts
    assert commands_centos_grub_lacks(texts) == []
    old_lookup = "if regexp --set=1:m1 '^(..):' \"$net_default_mac\"; then\n    echo x\nfi\n"
    assert commands_centos_grub_lacks({"old": old_lookup}) == ["old: regexp (module regexp)"]


def test_grub_paths_do_not_depend_on_prefix(tree: Path) -> None:
    """On CentOS's GRUB $prefix is (tftp,<server>)/EFI/centos, not the tree: the lookup starts
    at ($root), and the entry for each MAC is there under the name $net_default_mac gives."""
    text = (tree / "tftp/grub.cfg").read_text()
    assert "$prefix" not in text.replace("# ", "#").split("\nset timeout")[1]
    assert 'configfile "($root)/grub.cfg-mac-$net_default_mac"' in text
    for _name, mac, _address in HOSTS:
        files = pxemenus.host_files(mac)
        assert files["grub_mac"] == f"tftp/grub.cfg-mac-{mac}"
        assert (tree / files["grub_mac"]).read_text() == (tree / files["grub"]).read_text()


def test_local_boot_falls_through_to_installed_systems_only(tree: Path) -> None:
    local = pxemenus.local_entries(HOSTS[0][0], HOSTS[0][1])
    entry = local[pxemenus.host_files(HOSTS[0][1])["grub"]]
    searches = re.findall(r"search --no-floppy --set=esp --file ([^;\s]+)", entry)
    # The installed CentOS's GRUB, then an installed shim's removable path (never install
    # media: they carry no fbx64.efi), then a message and exit (a reset on CentOS's GRUB).
    assert searches == ["/EFI/centos/grubx64.efi", "/EFI/BOOT/fbx64.efi"]
    assert entry.rstrip().endswith("    exit 1\n}") and "ksbuild: no installed system" in entry
