"""Site documents for tests: the example's shape as a dict, and writers for YAML files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

HASH = ("$6$ksbuildexample$QjxFPRYKzPP5427c/UElsobtSR1I2HT8q//HWLvV5ohvqmL1n2TXss6FPP4xC3"
        "vpLTPXIonQUOmaMzB7L1JAv1")

BASE: dict[str, Any] = {
    "defaults": {
        "lang": "en_US.UTF-8",
        "keyboard": "us",
        "timezone": "Asia/Shanghai",
        "selinux": "disabled",
        "firewall": {"enabled": False},
        "root_password_hash": HASH,
        "source": "https://vault.centos.org/7.9.2009/os/x86_64/",
        "packages": {"environment": "virtualization-host-environment", "groups": [],
                     "extra": []},
    },
    "hosts": [
        {
            "hostname": "cdh-host.c7.jevoncode.com",
            "mac": "52:54:00:12:34:56",
            "bridge": {"name": "br0", "slaves": ["eth0"], "address": "192.168.1.108/16",
                       "gateway": "192.168.1.1", "dns": ["192.168.1.1"]},
        },
        {
            "hostname": "kvm2.example.com",
            "mac": "52:54:00:12:34:57",
            "selinux": "enforcing",
            "firewall": {"enabled": True, "services": ["ssh", "libvirt"]},
            "bridges": [
                {"name": "br0", "slaves": ["eno1", "eno2"], "address": "10.1.0.12/24",
                 "gateway": "10.1.0.1", "dns": ["10.1.0.2", "10.1.0.3"]},
                {"name": "br1", "slaves": ["eno3"], "address": "10.2.0.12/24", "stp": True},
            ],
        },
    ],
}


def site_doc(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return doc


def write_site(folder: Path, doc: dict[str, Any] | str, name: str = "site.yaml") -> Path:
    path = folder / name
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path
