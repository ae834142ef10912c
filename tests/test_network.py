"""The host network model (builder/network.py): what it accepts, how defaults and hosts
merge, the one-line error for each bad layout, and the install-time `network` lines
(builder/ifcfg.py) as anaconda 21 and dracut read them."""

from __future__ import annotations

import copy
import random
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import ifcfg, kickstart, site
from builder.errors import InputError
from builder.network import BOND, BRIDGE, NIC, VLAN
from tests.conftest import REPO
from tests.sitefiles import HASH

FLEET = REPO / "kickstarts" / "fleet.yaml"


def fleet_doc() -> dict[str, Any]:
    """The LACP layout of kickstarts/fleet.yaml, as a document the tests can break."""
    doc: dict[str, Any] = yaml.safe_load(FLEET.read_text())
    doc["defaults"]["root_password_hash"] = HASH
    return doc


def load_doc(tmp_path: Path, doc: dict[str, Any]) -> site.Site:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return site.load(path)


def load_error(tmp_path: Path, doc: dict[str, Any]) -> str:
    with pytest.raises(InputError) as caught:
        load_doc(tmp_path, doc)
    message = str(caught.value)
    assert "\n" not in message
    return message


def host0(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["hosts"][0]["network"]  # type: ignore[no-any-return]


def layout(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["defaults"]["network"]  # type: ignore[no-any-return]


# --- what a fleet file means -------------------------------------------------------------------


def test_fleet_example_layout_and_per_host_merge() -> None:
    loaded = site.load(FLEET)
    first, second = loaded.hosts
    network = first.network
    kinds = {d.name: d.kind for d in network.devices}
    assert kinds == {"nic1": NIC, "nic2": NIC, "bond0": BOND, "bond0.10": VLAN,
                     "bond0.20": VLAN, "bond0.30": VLAN, "br-mgmt": BRIDGE, "br-guest": BRIDGE}
    assert network["nic1"].mac == "52:54:00:10:00:01" and network["nic1"].device is None
    assert network["nic1"].master == network["nic2"].master == "bond0"
    assert dict(network["bond0"].bond_options) == {
        "mode": "802.3ad", "miimon": "100", "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"}
    assert (network["bond0.30"].parent, network["bond0.30"].vlan_id) == ("bond0", 30)
    assert network["bond0.30"].mtu == 9000 and network["bond0.10"].mtu == 1500
    assert network["br-mgmt"].default_route and network["br-mgmt"].dns
    assert [d.name for d in network.devices if d.default_route] == ["br-mgmt"]
    assert [(str(r.to), r.device) for r in network.routes] == [("203.0.113.0/24", "br-mgmt")]
    # The second host: the same layout, its own MACs and addresses.
    assert second.network["nic2"].mac == "52:54:00:10:00:12"
    assert str(second.network["br-mgmt"].address) == "192.0.2.12/24"
    assert second.network["bond0"].bond_options == network["bond0"].bond_options


def test_a_host_overrides_one_device_of_the_layout(tmp_path: Path) -> None:
    """Devices are keyed by name: a host changes one key of one device and keeps the rest."""
    doc = fleet_doc()
    host0(doc)["bonds"] = {"bond0": {"mode": "active-backup", "lacp_rate": None}}
    doc["hosts"][0]["network"]["bonds"]["bond0"].pop("lacp_rate")
    layout(doc)["bonds"]["bond0"].pop("lacp_rate")
    layout(doc)["bonds"]["bond0"].pop("xmit_hash_policy")
    loaded = load_doc(tmp_path, doc)
    first, second = loaded.hosts
    assert dict(first.network["bond0"].bond_options)["mode"] == "active-backup"
    assert first.network["bond0"].slaves == ("nic1", "nic2")  # from the layout
    assert dict(second.network["bond0"].bond_options)["mode"] == "802.3ad"


# --- bad layouts: one line each, FILE:LINE: path: message ---------------------------------------

BAD_LAYOUTS = [
    # a loop of masters: bonds are made of NICs only, so a loop cannot be written
    (lambda d: layout(d)["bonds"].update(bond1={"slaves": ["bond0"]}),
     r"defaults\.network\.bonds\.bond1\.slaves: bond0 is a bond: a bond's slaves are NICs"),
    (lambda d: layout(d)["bridges"].update(br0={"ports": ["br0"]}),
     r"bridges\.br0\.ports: br0 is a bridge: a bridge's ports are NICs, bonds or VLANs"),
    (lambda d: layout(d)["bonds"]["bond0"].update(mtu=1500),
     r"defaults\.network\.vlans\.bond0\.30\.mtu: MTU 9000 is above bond0's 1500"),
    (lambda d: layout(d)["vlans"]["bond0.10"].update(mtu=9001),
     r"vlans\.bond0\.10\.mtu: 9001 is not between 68 and 9000"),
    (lambda d: host0(d)["vlans"]["bond0.30"].update(gateway="198.51.100.1"),
     r"hosts\[0\]\.network\.bridges\.br-mgmt\.gateway: a second default route \(bond0\.30 "
     r"has a gateway already\); use routes"),
    (lambda d: d["hosts"][1]["network"]["nics"]["nic2"].update(mac="52:54:00:10:00:02"),
     r"hosts\[1\]: mac 52:54:00:10:00:02 is already used by hosts\[0\]"),
    (lambda d: d["hosts"][1]["network"]["vlans"]["bond0.30"].update(
        address="198.51.100.11/24"),
     r"hosts\[1\]: address 198.51.100.11 is already used by hosts\[0\]"),
    (lambda d: layout(d)["routes"].append({"to": "10.9.0.0/16", "via": "203.0.113.1"}),
     r"defaults\.network\.routes\[1\]\.via: 203.0.113.1 is not inside any subnet"),
    (lambda d: host0(d)["nics"]["nic2"].update(mac="01:00:5e:00:00:01"),
     r"hosts\[0\]\.network\.nics\.nic2\.mac: .* multicast"),
    (lambda d: layout(d)["bonds"]["bond0"].update(slaves=["nic1", "nic1"]),
     r"bonds\.bond0\.slaves: nic1 is already enslaved to bond0"),
    (lambda d: layout(d)["bonds"].update(bond1={"slaves": ["nic2"]}),
     r"bonds\.bond1\.slaves: nic2 is already enslaved to bond0"),
    (lambda d: layout(d)["bonds"].update(bond1={"mode": "802.3ad"}),
     r"defaults\.network\.bonds\.bond1: missing required key 'slaves'"),
    (lambda d: layout(d)["bonds"]["bond0"].update(slaves=[]),
     r"bonds\.bond0\.slaves: needs 1 to 16 items, has 0"),
    (lambda d: layout(d)["vlans"].update(vlan10={"parent": "bond0", "id": 10}),
     r"vlans\.vlan10: VLAN id 10 on bond0 is already bond0\.10"),
    (lambda d: layout(d)["vlans"].update(bond0={"parent": "nic1", "id": 5}),
     r"vlans\.bond0: bond0 is already defined as a bond"),
    (lambda d: layout(d)["vlans"].update(vlan5={"parent": "bond0", "id": 4095}),
     r"vlans\.vlan5\.id: 4095 is not between 1 and 4094"),
    (lambda d: layout(d)["vlans"].update(storage={}),
     r"vlans\.storage: give parent and id, or name the VLAN <parent>\.<id>"),
    (lambda d: (layout(d)["vlans"].update(vlan5={"parent": "nic1", "id": 5}),
                host0(d)["nics"]["nic1"].update(device="eno1")),
     r"vlans\.vlan5: nic1 is enslaved to bond0: a VLAN goes on the master"),
    (lambda d: layout(d)["bridges"]["br-guest"].update(ports=["bond0.10"]),
     r"bridges\.br-guest\.ports: bond0\.10 is already enslaved to br-mgmt"),
    (lambda d: layout(d)["bridges"]["br-guest"].update(ports=["bond9"]),
     r"bridges\.br-guest\.ports: bond9 is not defined"),
    (lambda d: host0(d)["vlans"]["bond0.30"].update(address="192.0.2.99/25"),
     r"bridges\.br-mgmt\.address: 192\.0\.2\.0/24 overlaps bond0\.30's 192\.0\.2\.0/25"),
    (lambda d: host0(d)["bridges"]["br-mgmt"].update(gateway="192.0.3.1"),
     r"bridges\.br-mgmt\.gateway: 192\.0\.3\.1 is not inside 192\.0\.2\.0/24"),
    (lambda d: host0(d).update(vlans={"bond0.10": {"address": "192.0.2.50/24"}}),
     r"bridges\.br-mgmt\.ports: bond0\.10 has an address: an enslaved device has none"),
    (lambda d: layout(d)["bonds"]["bond0"].update(primary="nic2"),
     r"bonds\.bond0\.primary: primary applies to modes active-backup"),
    (lambda d: layout(d)["bridges"]["br-guest"].update(forward_delay=4),
     r"bridges\.br-guest\.forward_delay: a forward delay needs stp: true"),
    (lambda d: host0(d).update(default_route="br-guest"),
     r"network\.default_route: br-mgmt has the gateway"),
    (lambda d: host0(d).update(default_route="none"),
     r"network\.default_route: default_route is none but br-mgmt has a gateway"),
    (lambda d: layout(d)["install"].update(nic="bond0"),
     r"defaults\.network\.install\.nic: bond0 is not one of the host's nics"),
    (lambda d: layout(d)["vlans"].update(vlan7={"parent": "nic9", "id": 7}),
     r"vlans\.vlan7\.parent: nic9 is not defined"),
    (lambda d: d["hosts"][0].update(bridge={"slaves": ["eth0"]}),
     r"hosts\[0\]\.network: give `network` or `bridge`/`bridges`, not both"),
    (lambda d: layout(d)["nics"].update({"eth0;reboot": {}}),
     r"nics\.eth0;reboot: 'eth0;reboot' is not an interface name"),
]


@pytest.mark.parametrize(("mutate", "expected"), BAD_LAYOUTS,
                         ids=[str(n) for n in range(len(BAD_LAYOUTS))])
def test_bad_layout_is_one_line_with_file_and_line(tmp_path: Path, mutate: Any,
                                                   expected: str) -> None:
    doc = fleet_doc()
    mutate(doc)
    message = load_error(tmp_path, doc)
    assert re.search(r"^\S+site\.yaml:\d+: ", message), message
    assert re.search(expected, message), message


def test_vlan_on_a_nic_picked_only_by_mac_is_refused(tmp_path: Path) -> None:
    doc = fleet_doc()
    layout(doc)["nics"]["nic3"] = {}
    host0(doc)["nics"]["nic3"] = {"mac": "52:54:00:10:00:03"}
    layout(doc)["vlans"]["vlan40"] = {"parent": "nic3", "id": 40}
    assert "nic3 is picked by MAC only: a VLAN needs its parent's kernel name" in load_error(
        tmp_path, doc)
    host0(doc)["nics"]["nic3"]["device"] = "eno3"
    assert load_doc(tmp_path, doc).hosts[0].network["vlan40"].parent == "nic3"


# (mutation of the fleet example, the path the one line names)
CLI_CASES = [
    (lambda d: layout(d)["bonds"]["bond0"].update(mtu=1500),  # bond0.30 (9000) above it
     r"defaults\.network\.vlans\.bond0\.30\.mtu"),
    (lambda d: layout(d)["bonds"].update(bond1={"slaves": ["bond0"]}),  # a loop of masters
     r"defaults\.network\.bonds\.bond1\.slaves"),
    (lambda d: host0(d)["vlans"]["bond0.30"].update(gateway="198.51.100.1"),  # two defaults
     r"hosts\[0\]\.network\.bridges\.br-mgmt\.gateway"),
    (lambda d: d["hosts"][1]["network"]["nics"]["nic1"].update(mac="52:54:00:10:00:01"),
     r"hosts\[1\]"),  # a MAC twice
    (lambda d: layout(d)["routes"].append({"to": "10.9.0.0/16", "via": "203.0.113.1"}),
     r"defaults\.network\.routes\[1\]\.via"),  # an unreachable gateway
]


@pytest.mark.parametrize(("mutate", "where"), CLI_CASES,
                         ids=["mtu", "loop", "two-defaults", "mac-twice", "route"])
def test_bad_layout_exits_2_and_writes_nothing(tmp_path: Path, mutate: Any,
                                               where: str) -> None:
    doc = fleet_doc()
    mutate(doc)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "builder", "render", str(path), "-o",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert re.fullmatch(rf"ksbuild: \S+site\.yaml:\d+: {where}: .*\n", done.stderr), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


# --- install-time lines --------------------------------------------------------------------------


def network_commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("network ")]


def test_install_network_is_the_first_line_activated_and_on_boot(tmp_path: Path) -> None:
    """Issue 10 item 1: every host gets a network the installer brings up; a host without
    bridges used to get only `network --hostname=`, which dracut drops (parse-kickstart,
    setting_only_hostname) and anaconda's NM (no-auto-default=*) never replaces."""
    doc = {"defaults": {"root_password_hash": HASH}, "hosts": [
        {"hostname": "plain.example.com", "mac": "52:54:00:10:00:99"},
        {"hostname": "nomac.example.com"},
        {"hostname": "static.example.com", "network": {"install": {
            "address": "192.0.2.77/24", "gateway": "192.0.2.1", "dns": ["192.0.2.53"]}}}]}
    rendered = kickstart.render_site(site.load(FLEET))
    rendered.update(kickstart.render_site(load_doc(tmp_path, doc)))
    assert network_commands(rendered["kvm1.example.com"]) == [
        "network --device=52:54:00:10:00:01 --bootproto=dhcp --onboot=yes --activate",
        "network --hostname=kvm1.example.com"]
    assert network_commands(rendered["plain.example.com"]) == [
        "network --device=52:54:00:10:00:99 --bootproto=dhcp --onboot=yes --activate",
        "network --hostname=plain.example.com"]
    assert network_commands(rendered["nomac.example.com"])[0] == (
        "network --device=link --bootproto=dhcp --onboot=yes --activate")
    assert network_commands(rendered["static.example.com"])[0] == (
        "network --device=link --bootproto=static --ip=192.0.2.77 --netmask=255.255.255.0 "
        "--gateway=192.0.2.1 --nameserver=192.0.2.53 --onboot=yes --activate")


def test_a_bond_with_two_vlans_is_not_an_install_time_line(tmp_path: Path) -> None:
    """pykickstart issue 311: two `network --device=bond0 --vlanid=` lines warn "A network
    device with the name bond0 has already been defined" (we turn warnings into errors),
    while anaconda accepts them. ksbuild never writes them: the installer needs one network
    (the untagged install NIC), and the bond and its VLANs come from %post's ifcfg files.
    So the validator keeps refusing every warning, and this host still validates."""
    loaded = site.load(FLEET)
    text = kickstart.render_site(loaded)["kvm1.example.com"]
    assert not any("--bondslaves" in line or "--vlanid" in line
                   for line in network_commands(text))
    validator = kickstart.Validator()
    twice = text.replace(
        "network --hostname=",
        "network --device=bond0 --bondslaves=eno1,eno2 --vlanid=10 --bootproto=dhcp\n"
        "network --device=bond0 --bondslaves=eno1,eno2 --vlanid=20 --bootproto=dhcp\n"
        "network --hostname=")
    with pytest.raises(kickstart.KsbuildError, match="already been defined"):
        validator.validate(twice, "twice.cfg")
    validator.validate(text, "kvm1.cfg")


def test_legacy_bridges_stp_and_defroute(tmp_path: Path) -> None:
    """Issue 10 item 2: STP on gets a forward delay NM 1.18 accepts (never DELAY=0), the
    installer's bridge gets the same STP as the installed one, and a DHCP bridge beside the
    gateway bridge takes no default route, at install time or after."""
    doc = {"defaults": {"root_password_hash": HASH}, "hosts": [{
        "hostname": "b.example.com", "bridges": [
            {"name": "br0", "slaves": ["eth0"], "address": "192.0.2.5/24",
             "gateway": "192.0.2.1", "stp": True},
            {"name": "br1", "slaves": ["eth1"], "stp": True, "forward_delay": 4},
            {"name": "br2", "slaves": ["eth2"]}]}]}
    loaded = load_doc(tmp_path, doc)
    text = kickstart.render_site(loaded)["b.example.com"]
    lines = network_commands(text)
    assert "--bridgeopts=stp=yes,forward-delay=15" in lines[0]
    assert "--nodefroute --bridgeopts=stp=yes,forward-delay=4" in lines[1]
    assert "--nodefroute --bridgeopts=stp=no" in lines[2]
    files = {f.filename: dict(f.lines) for f in ifcfg.ifcfg_files(loaded.hosts[0])}
    assert (files["ifcfg-br0"]["STP"], files["ifcfg-br0"]["DELAY"]) == ("yes", "15")
    assert (files["ifcfg-br1"]["DELAY"], files["ifcfg-br1"]["DEFROUTE"]) == ("4", "no")
    assert (files["ifcfg-br2"]["STP"], files["ifcfg-br2"]["DELAY"]) == ("no", "0")
    assert files["ifcfg-br0"]["DEFROUTE"] == "yes" and files["ifcfg-br2"]["DEFROUTE"] == "no"


def test_eth_names_on_installer_and_installed_kernel(tmp_path: Path) -> None:
    """Issue 10 item 8: `nic_names: eth` for fleets that want eth0, eth1..."""
    from builder.media.iso import installer_args
    from builder.pxe.config import PxeSettings  # noqa: F401 (the PXE args below)
    from builder.pxe.tree import boot_host

    doc = fleet_doc()
    doc["defaults"]["nic_names"] = "eth"
    doc["defaults"]["kernel_args"] = ["console=ttyS0"]
    loaded = load_doc(tmp_path, doc)
    text = kickstart.render_site(loaded)["kvm1.example.com"]
    assert re.search(r'^bootloader .*--append="console=ttyS0 net.ifnames=0 biosdevname=0"$',
                     text, re.M)
    assert installer_args(list(loaded.hosts), "x") == ("net.ifnames=0", "biosdevname=0")
    doc["hosts"][1]["nic_names"] = "predictable"
    mixed = load_doc(tmp_path, doc)
    with pytest.raises(InputError, match="must agree on nic_names"):
        installer_args(list(mixed.hosts), "x")
    settings = type("Settings", (), {"install_tree": None, "boot_args": ()})()
    args = boot_host(mixed.hosts[0], "http://127.0.0.1:8080", settings).args  # type: ignore
    assert " net.ifnames=0 biosdevname=0" in args
    assert "net.ifnames" not in boot_host(mixed.hosts[1], "http://127.0.0.1:8080",
                                          settings).args  # type: ignore[arg-type]


# --- every generated kickstart passes the RHEL7 grammar -----------------------------------------


def test_fleet_kickstarts_pass_ksvalidator(tmp_path: Path) -> None:
    paths = kickstart.write_kickstarts(site.load(FLEET), tmp_path / "ks")
    ksvalidator = Path(sys.executable).parent / "ksvalidator"
    for path in paths:
        done = subprocess.run([str(ksvalidator), "-e", "-v", "RHEL7", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_ifcfg_uuids_are_stable_and_distinct() -> None:
    loaded = site.load(FLEET)
    first = [f for host in loaded.hosts for f in ifcfg.ifcfg_files(host)]
    again = [f for host in site.load(FLEET).hosts for f in ifcfg.ifcfg_files(host)]
    assert first == again
    uuids = [dict(f.lines)["UUID"] for f in first if f.prefix == "ifcfg"]
    assert len(uuids) == 16 and len(set(uuids)) == 16
    assert copy.deepcopy(first) == first


def test_ifcfg_uuid_is_uuid5() -> None:
    """ifcfg_uuid builds uuid5's text without a UUID object: the same on varied names."""
    chance = random.Random(16)
    for _ in range(5000):
        hostname = "".join(chance.choice("ab.-_0é\u2028") for _ in range(chance.randrange(40)))
        device = chance.choice(["br0", "eth0", "bond0.100", "", "é"])
        assert ifcfg.ifcfg_uuid(hostname, device) == \
            str(uuid.uuid5(ifcfg.UUID_NAMESPACE, f"{hostname}/{device}"))


def test_iso_menus_carry_the_installer_args() -> None:
    """nic_names: eth reaches every installer entry of the ISO, before inst.ks=."""
    from builder.media import bootmenu

    edit = bootmenu.MenuEdit("CentOS 7 x86_64", "KSB", 5, installer_args=(
        "net.ifnames=0", "biosdevname=0"))
    line = bootmenu.add_kickstart("initrd=initrd.img inst.stage2=hd:LABEL=KSB quiet",
                                  edit.ks_arg)
    assert line.endswith(" quiet net.ifnames=0 biosdevname=0 inst.ks=hd:LABEL=KSB:/ks.cfg")


def test_first_boot_report_expects_the_network_bridges() -> None:
    """The PXE first-boot report checks the bridges of the network model too: one without
    a host address is expected without one."""
    host = site.load(FLEET).hosts[0]
    assert kickstart.firstboot_bridges(host) == ("br-mgmt 192.0.2.11/24 bond0.10\n"
                                                 "br-guest none bond0.20")
    assert kickstart.firstboot_gateway(host) == "192.0.2.1"


def test_pxe_fixed_leases_from_the_network_model(tmp_path: Path) -> None:
    """A host written with `network` gets its fixed DHCP lease from its static install
    address, or from a device address inside the DHCP subnet."""
    from builder.pxe.tree import dhcp_leases
    from tests.pxe_support import write_site

    hosts = [
        {"hostname": "a.example.com", "mac": "52:54:00:30:00:01",
         "network": {"install": {"address": "192.0.2.31/24", "gateway": "192.0.2.1"}}},
        {"hostname": "b.example.com", "mac": "52:54:00:30:00:02",
         "network": {"nics": {"eno1": {"mac": "52:54:00:30:00:02"}, "eno2": {}},
                     "bridges": {"br0": {"ports": ["eno1"], "address": "192.0.2.32/24",
                                         "gateway": "192.0.2.1"},
                                 "br1": {"ports": ["eno2"], "address": "198.51.100.32/24"}}}},
    ]
    dhcp = {"subnet": "192.0.2.0/24", "interface": "ks-srv", "router": "192.0.2.1"}
    loaded = site.load(write_site(tmp_path, {"server": "http://192.0.2.1", "dhcp": dhcp},
                                  hosts=hosts))
    assert loaded.pxe is not None
    assert dhcp_leases(loaded, loaded.pxe) == ["52:54:00:30:00:01,192.0.2.31,a",
                                               "52:54:00:30:00:02,192.0.2.32,b"]


def test_iso_installer_entries_get_eth_names(tmp_path: Path) -> None:
    """`ksbuild iso` of a site with nic_names: eth: every installer entry of the three menus
    (isolinux, the ISO's grub.cfg and efiboot.img's copy) boots with the same NIC names as
    the installed host."""
    from tests.fixtures import centos_iso
    from tests.test_iso_support import efiboot_grub_cfg, extract, ksbuild

    doc = {"defaults": {"root_password_hash": HASH, "nic_names": "eth"},
           "hosts": [{"hostname": "kvm1.example.com", "mac": "52:54:00:12:34:56"}]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "o.iso"
    done = ksbuild("iso", path, "--base", centos_iso(), "-o", out)
    assert done.returncode == 0, done.stderr
    args = "net.ifnames=0 biosdevname=0 inst.ks=hd:LABEL="
    assert extract(out, "/isolinux/isolinux.cfg").decode().count(args) == 3
    for grub in (extract(out, "/EFI/BOOT/grub.cfg").decode(), efiboot_grub_cfg(out).decode()):
        assert grub.count(args) == 3
    assert 'net.ifnames=0 biosdevname=0"' in extract(out, "/ks.cfg").decode()
