"""PXE boots in QEMU of a tree built by `ksbuild pxe`, its kickstarts served by `ksbuild serve`.

QEMU's user network (restrict=on) is the only network: its TFTP serves the tree's tftp/, and
guestfwd maps the site's server http://10.0.2.100 to `ksbuild serve` on a loopback port. The
machines have a local disk after the NIC in the boot order that prints KSBUILD-LOCAL-DISK when
it is booted (see tests/pxe_support.py), so "boots locally" is seen, not assumed.

The matrix: BIOS (iPXE ROM -> pxelinux), UEFI (OVMF -> GRUB, CentOS-like: linuxefi, through
grub.cfg's lookup by $net_default_mac), iPXE scripts (boot.ipxe), upstream GRUB (linux/initrd,
its own lookup of grub.cfg-01-<mac>); each installs a host of the site, and where it is cheap
also shows that the host boots locally after /done and that a machine not in the site does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures import centos_iso
from tests.fixtures.qemu import BootResult, boot
from tests.pxe_support import (
    GUEST_SERVER,
    HOSTS,
    LOCAL_MARKER,
    OTHER_MARKER,
    UNKNOWN_MAC,
    bios_local_disk,
    build,
    disk_args,
    grub_image,
    uefi_local_disk,
    write_site,
)

pytestmark = pytest.mark.boot
H1, MAC1, _ = HOSTS[0]
BOOT_TIMEOUT = 240


class Lab:
    """A tree, `ksbuild serve` for it on 127.0.0.1, and boots against both."""

    def __init__(self, tmp_path: Path, grub: str, **pxe_keys: object) -> None:
        site_path = write_site(tmp_path, {"server": GUEST_SERVER, "menu_timeout": 1,
                                          "grub": str(grub_image(grub)), **pxe_keys})
        self.tree = tmp_path / "pxe"
        self.result = build(site_path, self.tree, base=centos_iso())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "serve", str(self.tree), "--listen",
             "127.0.0.1:0"], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:([0-9]+)/", first)
        assert found, first
        self.port = int(found.group(1))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def boot(self, mode: str, bootfile: str, mac: str, layout: str = "centos") -> BootResult:
        bios = mode == "pxe-bios"
        disk = bios_local_disk() if bios else uefi_local_disk(layout)
        return boot(mode, tftp_dir=self.tree / "tftp", bootfile=bootfile, mac=mac,
                    http_port=self.port, timeout=BOOT_TIMEOUT, extra_args=disk_args(disk, bios))

    def done(self, hostname: str) -> str:
        """What the kickstart's %post does at the end of an install."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/done/{hostname}",
                                         data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            return str(answer.read().decode())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=60) == 0
        self.reader.join(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture()
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    started = Lab(tmp_path, getattr(request, "param", "centos"))
    try:
        yield started
    finally:
        if started.proc.poll() is None:
            started.stop()


@pytest.fixture()
def local_tree_lab(tmp_path: Path) -> Iterator[Lab]:
    """The base DVD published as the install tree; the kernel and initrd exist for HTTP only
    (the TFTP copies are removed), so a boot that gets them got them over HTTP."""
    started = Lab(tmp_path, "centos", install_tree="local")
    for name in ("vmlinuz", "initrd.img"):
        (started.tree / "tftp/images" / name).unlink()
    try:
        yield started
    finally:
        if started.proc.poll() is None:
            started.stop()


def assert_installs(lab: Lab, result: BootResult, hostname: str, mac: str) -> None:
    """The host's own entry booted the installer, which fetched and printed its kickstart."""
    assert result.cmdline is not None, result.describe()
    assert f"inst.ks={GUEST_SERVER}/ks/{hostname}.cfg" in result.cmdline.split()
    assert f"BOOTIF=01-{mac.replace(':', '-')}" in result.cmdline.split()
    expected = (lab.tree / f"http/ks/{hostname}.cfg").read_bytes()
    assert result.kickstart_source == f"{GUEST_SERVER}/ks/{hostname}.cfg", result.describe()
    assert result.kickstart_sha256 == hashlib.sha256(expected).hexdigest(), result.describe()
    assert LOCAL_MARKER not in result.log
    assert any(f'"GET /ks/{hostname}.cfg HTTP/1.1" 200' in line for line in lab.lines), lab.lines


def assert_boots_locally(result: BootResult) -> None:
    assert LOCAL_MARKER in result.log, result.describe()
    assert result.cmdline is None and not result.timed_out, result.describe()


def test_bios_pxelinux_installs_once_then_boots_locally(lab: Lab) -> None:
    assert_installs(lab, lab.boot("pxe-bios", "pxelinux.0", MAC1), H1, MAC1)
    assert lab.done(H1) == f"{H1} now boots from its disk\n"
    assert_boots_locally(lab.boot("pxe-bios", "pxelinux.0", MAC1))
    assert_boots_locally(lab.boot("pxe-bios", "pxelinux.0", UNKNOWN_MAC))
    lab.stop()
    assert lab.lines[-1] == "ksbuild serve: stopped"


def test_uefi_grub_installs_once_then_boots_locally(lab: Lab) -> None:
    assert lab.result.grub_commands == "linuxefi"
    result = lab.boot("pxe-uefi", "grubx64.efi", MAC1)
    assert_installs(lab, result, H1, MAC1)
    # This GRUB has only CentOS 7.9's built-in modules and its $prefix, (tftp,<server>)/EFI/
    # centos, and reads grub.cfg first: the entry came through grub.cfg's lookup by MAC, from
    # the TFTP root, with no command CentOS's GRUB lacks (issue 10 item 6).
    assert f"ksbuild: looking for (tftp,10.0.2.2)/grub.cfg-mac-{MAC1}" in result.log
    assert "can't find command" not in result.log, result.log
    assert lab.done(H1) == f"{H1} now boots from its disk\n"
    assert_boots_locally(lab.boot("pxe-uefi", "grubx64.efi", MAC1))
    assert_boots_locally(lab.boot("pxe-uefi", "grubx64.efi", UNKNOWN_MAC))
    # A done host whose disk holds no CentOS GRUB but an installed shim's removable path
    # boots that, as the firmware's next boot option would (issue 10 item 7).
    other = lab.boot("pxe-uefi", "grubx64.efi", MAC1, layout="shim-fallback")
    assert OTHER_MARKER in other.log and other.cmdline is None, other.describe()


def test_ipxe_scripts_install_by_mac_and_send_strangers_to_disk(lab: Lab) -> None:
    result = lab.boot("pxe-bios", "boot.ipxe", MAC1)
    assert_installs(lab, result, H1, MAC1)
    assert "initrd=initrd.img" in (result.cmdline or "").split()
    assert_boots_locally(lab.boot("pxe-bios", "boot.ipxe", UNKNOWN_MAC))


@pytest.mark.parametrize("lab", ["upstream"], indirect=True)
def test_upstream_grub_gets_linux_and_initrd(lab: Lab) -> None:
    assert lab.result.grub_commands == "linux"
    entry = (lab.tree / f"tftp/grub.cfg-01-{MAC1.replace(':', '-')}").read_text()
    assert re.search(r"^\s+linux \(http,10\.0\.2\.100\)/images/vmlinuz ", entry, re.M)
    assert_installs(lab, lab.boot("pxe-uefi", "grubx64.efi", MAC1), H1, MAC1)


@pytest.mark.parametrize(("mode", "bootfile"), [("pxe-bios", "boot.ipxe"),
                                                ("pxe-uefi", "grubx64.efi")])
def test_kernel_over_http_and_the_install_tree_on_the_boot_server(
        local_tree_lab: Lab, mode: str, bootfile: str) -> None:
    lab = local_tree_lab
    result = lab.boot(mode, bootfile, MAC1)
    assert_installs(lab, result, H1, MAC1)
    for name in ("vmlinuz", "initrd.img"):
        assert any(f'"GET /images/{name} HTTP/1.1" 200' in line for line in lab.lines), lab.lines
    # The guest read the install tree from inst.repo on the boot server, byte for byte.
    repo = f"{GUEST_SERVER}/centos/7.9.2009/os/x86_64/"
    assert f"inst.repo={repo}" in (result.cmdline or "").split()
    published = lab.tree / "http/centos/7.9.2009/os/x86_64"
    assert result.repo_files == {
        name: hashlib.sha256((published / name).read_bytes()).hexdigest()
        for name in (".treeinfo", "repodata/repomd.xml")}, result.describe()
    assert "[general]\nname = CentOS-7\n" in result.log


def test_a_pxe_install_reports_each_state_in_order(tmp_path: Path) -> None:
    """The guest fetches its kickstart by MAC-named entry, then calls the URLs that kickstart
    names, as its %pre, %post and first-boot unit would (tests/fixtures/initramfs/init with
    ksbuild.test.events); `ksbuild status --json` shows the states in order."""
    lab = Lab(tmp_path, "centos", boot_args=["ksbuild.test.events"])
    try:
        result = lab.boot("pxe-bios", "pxelinux.0", MAC1)
        assert_installs(lab, result, H1, MAC1)
        for what in ("started", "installed", "booted"):
            assert f"KSBUILD-EVENT {what} ok" in result.log, result.describe()
        done = subprocess.run([sys.executable, "-m", "builder", "status", str(lab.tree),
                               "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        host = {h["host"]: h for h in status["hosts"]}[H1]
        assert host["path"] == ["kickstart", "started", "installed", "booted"], host
        assert host["state"] == "booted" and host["message"] == "network up as configured"
        assert status["counts"]["booted"] == 1
        [booted] = [json.loads(line) for line in
                    (lab.tree / f"state/events/{H1}.jsonl").read_text().splitlines()
                    if '"booted"' in line]
        # QEMU's user network with restrict=on offers no router: no default route to send.
        assert booted["data"] == {"address": "eth0 10.0.2.15/24", "route": "",
                                  "bridge": "none"}
        # The %post's done call switched the host to local boot.
        assert "localboot" in (lab.tree / f"tftp/pxelinux.cfg/01-{MAC1.replace(':', '-')}"
                               ).read_text()
    finally:
        lab.stop()
