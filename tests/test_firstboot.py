"""The first-boot script, run for real against a real network: a Linux bridge with a veth
slave, the host's address and default route, made in a user + network namespace of the test
(nothing leaves it), and `ksbuild serve` on that namespace's own loopback. What it reports
lands in the tree's events as `booted`, or `degraded` naming what differs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO
from tests.pxe_support import HOSTS, build, write_site
from tests.test_pxe_daemons import in_namespace

H1, _, ADDRESS = HOSTS[0]
SERVER = "http://127.0.0.1:8080"  # the namespace's own loopback


def first_boot(tmp_path: Path, network: str, wait: int,
               hosts: list[dict[str, Any]] | None = None) -> tuple[dict[str, object], str]:
    """Build a tree, take H1's first-boot script out of its kickstart, make `network` in a
    fresh namespace, run the script there; H1's last event and the stub systemctl's calls."""
    tree = tmp_path / "pxe"
    build(write_site(tmp_path, {"server": SERVER}, hosts=hosts), tree)
    kickstart = (tree / f"http/ks/{H1}.cfg").read_text()
    script = kickstart.split("<<'KSBUILD_FIRSTBOOT'\n", 1)[1].split("\nKSBUILD_FIRSTBOOT\n")[0]
    (tmp_path / "ksbuild-firstboot").write_text(script + "\n")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/systemctl.calls\n")
    (stubs / "systemctl").chmod(0o755)
    serve = shlex.join([sys.executable, "-m", "builder", "serve", str(tree), "--listen",
                        "127.0.0.1:8080"])
    done = in_namespace(f"""
cd {shlex.quote(str(REPO))}
{network}
{serve} >/dev/null 2>{tmp_path}/serve.log &
serve_pid=$!
for i in $(seq 100); do curl -sf -o /dev/null {SERVER}/status.json && break; sleep 0.1; done
PATH={stubs}:$PATH KSBUILD_FIRSTBOOT_WAIT={wait} bash {tmp_path}/ksbuild-firstboot
kill -TERM "$serve_pid"  # (a background job of sh ignores SIGINT)
wait "$serve_pid"
""", timeout=90, own_sysfs=True)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tree / f"state/events/{H1}.jsonl").read_text().splitlines()
    calls = (tmp_path / "systemctl.calls").read_text() if (tmp_path / "systemctl.calls"
                                                            ).exists() else ""
    return json.loads(lines[-1]), calls


BRIDGE = f"""
ip link add br0 type bridge
ip link add eth0 type veth peer name peer0
ip link set eth0 master br0
ip link set peer0 up
ip link set eth0 up
ip link set br0 up
ip addr add {ADDRESS}/24 dev br0
"""


def test_the_first_boot_reports_the_network_it_came_up_with(tmp_path: Path) -> None:
    event, calls = first_boot(tmp_path, BRIDGE + "ip route add default via 10.0.2.2 dev br0",
                              wait=30)
    assert event["state"] == "booted", event
    assert event["message"] == "network up as configured"
    data = event["data"]
    assert isinstance(data, dict)
    assert data["address"] == f"br0 {ADDRESS}/24"
    assert data["route"].startswith("default via 10.0.2.2 dev br0")
    assert data["bridge"] == "br0 up slaves=eth0 stp=0; "
    assert calls == "disable ksbuild-firstboot.service\n"  # then it disables itself


def test_the_first_boot_names_what_differs(tmp_path: Path) -> None:
    # No default route, and eth0 not in the bridge.
    network = BRIDGE.replace("ip link set eth0 master br0\n", "")
    event, _calls = first_boot(tmp_path, network, wait=2)
    assert event["state"] == "degraded", event
    # A bridge without a port has no carrier: the kernel says its operstate is "unknown".
    assert event["message"] == ("network not as configured: br0: unknown;br0: eth0 is not a "
                                "slave;no default route via 10.0.2.2"), event
    assert event["data"] == {"address": f"br0 {ADDRESS}/24", "route": "",
                             "bridge": "br0 unknown slaves=none stp=0; "}
    assert event["client"] == "127.0.0.1"


def test_the_first_boot_knows_a_network_model_host(tmp_path: Path) -> None:
    """A host written with `network`: its bridges are expected too, and a bridge only for
    guests (no host address) is not reported as missing one."""
    hosts = [{"hostname": H1, "mac": HOSTS[0][1], "network": {
        "nics": {"eth0": {}, "eth1": {}},
        "bridges": {"br0": {"ports": ["eth0"], "address": f"{ADDRESS}/24",
                            "gateway": "10.0.2.2"},
                    "brg": {"ports": ["eth1"]}}}}]
    guests = """
ip link add brg type bridge
ip link add eth1 type veth peer name peer1
ip link set eth1 master brg
ip link set peer1 up
ip link set eth1 up
ip link set brg up
"""
    event, _calls = first_boot(tmp_path, BRIDGE + guests + "ip route add default via "
                               "10.0.2.2 dev br0", wait=30, hosts=hosts)
    assert event["state"] == "booted", event
    data = event["data"]
    assert isinstance(data, dict)
    assert data["bridge"] == "br0 up slaves=eth0 stp=0; brg up slaves=eth1 stp=0; "
