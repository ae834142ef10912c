"""Generate a site file with N hosts, for benchmarks (and tests of large fleets)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from builder.site import Host

HASH = ("$6$ksbuildexample$QjxFPRYKzPP5427c/UElsobtSR1I2HT8q//HWLvV5ohvqmL1n2TXss6FPP4xC3"
        "vpLTPXIonQUOmaMzB7L1JAv1")


def fleet_site(count: int) -> dict[str, object]:
    network = ipaddress.IPv4Network("10.0.0.0/8")
    hosts = []
    for n in range(count):
        address = network.network_address + 256 + n
        hosts.append({
            "hostname": f"kvm{n:05d}.rack{n // 40:03d}.example.com",
            "mac": "52:54:00:" + ":".join(f"{n >> s & 255:02x}" for s in (16, 8, 0)),
            "bridge": {"name": "br0", "slaves": ["eth0"], "address": f"{address}/8",
                       "gateway": "10.0.0.1", "dns": ["10.0.0.1"]},
        })
    return {
        "defaults": {"timezone": "UTC", "selinux": "disabled", "firewall": {"enabled": False},
                     "root_password_hash": HASH},
        "hosts": hosts,
    }


def write_fleet_site(path: Path, count: int) -> Path:
    path.write_text(yaml.safe_dump(fleet_site(count), sort_keys=False), encoding="utf-8")
    return path


def pxe_extra(host: Host) -> dict[str, str]:
    """A PXE kickstart's own template values, as builder/pxe/tree.py gives them (the done and
    events URLs of a boot server)."""
    return {"pxe_done_url": f"http://10.0.0.5/pxe/done/{host.hostname}",
            "pxe_events_url": f"http://10.0.0.5/events/{host.hostname}"}
