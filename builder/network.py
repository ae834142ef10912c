"""A host's network: NICs (by kernel name or by MAC), bonds, VLANs, bridges, addresses, MTU,
routes, DNS and the one interface that holds the default route; the grammar of the site's
`network:` key, the model the renderers read, and the checks the grammar cannot express.

Devices are mappings keyed by name, not lists: the defaults write a fleet's layout once and a
host merges over it key by key (its NICs' MACs, its addresses), without repeating the rest.
The name of a device is the name of its ifcfg file; it is also the kernel's name, except for
a NIC picked by MAC alone (its ifcfg file binds it with HWADDR=, whatever the kernel calls it:
em1, eno1, enp3s0f0...).

The older `bridge`/`bridges` keys are read into the same model (from_bridges), so one renderer
writes every host's files.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from builder.schema import (
    Bool,
    Dict,
    Enum,
    Field,
    Int,
    List,
    Located,
    Map,
    Str,
    ipv4_address,
    ipv4_interface,
    mac_address,
)

# ---------------------------------------------------------------------------------------------
# The model.

NIC, BOND, VLAN, BRIDGE = "nic", "bond", "vlan", "bridge"
DEFAULT_MTU = 1500
# 802.1D's default; NetworkManager 1.18.8 accepts 2-30 s with STP on (docs/real-installer.md).
DEFAULT_FORWARD_DELAY = 15
# `nic_names: eth`: the kernel names NICs eth0, eth1... (systemd's predictable names and
# biosdevname off), on the installer's and the installed kernel's command lines alike.
ETH_NAMES_ARGS = ("net.ifnames=0", "biosdevname=0")


def kernel_args(nic_names: str) -> tuple[str, ...]:
    return ETH_NAMES_ARGS if nic_names == "eth" else ()


@dataclass(frozen=True)
class Device:
    """One interface and its ifcfg file. Fields that do not apply to its kind stay empty."""

    name: str  # the ifcfg file's name (ifcfg-<name>); the kernel name unless picked by MAC
    kind: str  # NIC, BOND, VLAN or BRIDGE
    device: str | None  # DEVICE=: the kernel name; None for a NIC picked by MAC alone
    mac: str | None = None  # HWADDR= (NICs)
    address: ipaddress.IPv4Interface | None = None
    dhcp: bool = False
    gateway: ipaddress.IPv4Address | None = None  # only on the default route's device
    default_route: bool = False
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    search: tuple[str, ...] = ()
    mtu: int | None = None
    master: str | None = None  # the bond (MASTER=) or bridge (BRIDGE=) that enslaves it
    bond_options: tuple[tuple[str, str], ...] = ()  # BONDING_OPTS, in the driver's names
    slaves: tuple[str, ...] = ()  # a bond's NICs
    parent: str | None = None  # a VLAN's NIC or bond
    vlan_id: int | None = None
    ports: tuple[str, ...] = ()  # a bridge's NICs, bonds or VLANs
    stp: bool = False
    forward_delay: int = 0  # seconds (DELAY=); 0 with STP off, 2-30 with it on

    @property
    def has_address(self) -> bool:
        return self.dhcp or self.address is not None


@dataclass(frozen=True)
class Route:
    to: ipaddress.IPv4Network
    via: ipaddress.IPv4Address
    device: str  # the device whose subnet holds `via`


@dataclass(frozen=True)
class Install:
    """The installer's one network: the first `network` line of the kickstart."""

    device: str  # --device=: a MAC (anaconda and dracut find the NIC by it), a name, or link
    nic: str | None  # the site's NIC it is, when it is one of the host's NICs
    address: ipaddress.IPv4Interface | None  # None: DHCP
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class Network:
    devices: tuple[Device, ...]  # NICs, bonds, VLANs, bridges: lower layers first
    routes: tuple[Route, ...]
    install: Install | None  # None: the legacy bridges give the install-time lines

    def __getitem__(self, name: str) -> Device:
        return next(device for device in self.devices if device.name == name)

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(d.mac for d in self.devices if d.mac)

    @property
    def addresses(self) -> tuple[ipaddress.IPv4Interface, ...]:
        return tuple(d.address for d in self.devices if d.address)

    def bridges(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == BRIDGE)


# ---------------------------------------------------------------------------------------------
# The grammar of `network:`.

IFACE = r"[A-Za-z][A-Za-z0-9_.-]{0,14}"
IPV4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
MAC = r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}"
DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad",
              "balance-tlb", "balance-alb")  # the EL7 bonding driver's names (bonding.txt)
HASH_POLICIES = ("layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4")


def _address(text: str) -> Any:
    return "dhcp" if text == "dhcp" else ipv4_interface(text)


def _name(description: str = "") -> Str:
    return Str(IFACE, description, what="an interface name")


ADDRESS = Str(r"dhcp|" + IPV4 + r"/[0-9]{1,2}", "address/prefix, or dhcp; omit for none "
              "(a device that only carries others)", what="an IPv4 address/prefix or dhcp",
              convert=_address)
GATEWAY = Str(IPV4, "the default route's gateway: on one device only, inside its subnet",
              what="an IPv4 address", convert=ipv4_address)
MTU = Int(68, 9000, "MTU; a VLAN or bridge never above its parent's (default 1500)")
LAYER3 = {"address": Field(ADDRESS), "gateway": Field(GATEWAY), "mtu": Field(MTU)}

NIC_GRAMMAR = Map({
    "mac": Field(Str(MAC, "picks the NIC by MAC (HWADDR=), whatever the kernel names it",
                     what="a MAC address", convert=mac_address)),
    "device": Field(_name("the kernel's name, when it is not the key (with mac: both bind)")),
    **LAYER3,
}, "a NIC; its key is its kernel name (em1, eno1, enp3s0f0), or any name when `mac` picks it")

BOND_GRAMMAR = Map({
    # Required, but checked after the merge: a host may override a bond the defaults made.
    "slaves": Field(List(_name(), "the NICs of the bond (required)", 1, 16)),
    "mode": Field(Enum(BOND_MODES, "bonding mode, as the EL7 bonding driver names it"),
                  default="active-backup"),
    "miimon": Field(Int(0, 60000, "link check interval, ms"), default=100),
    "lacp_rate": Field(Enum(("slow", "fast"), "LACPDU rate (802.3ad only)")),
    "xmit_hash_policy": Field(Enum(HASH_POLICIES, "slave choice (balance-xor, 802.3ad)")),
    "primary": Field(_name("the preferred slave (active-backup, balance-tlb, balance-alb)")),
    **LAYER3,
}, "a bond of NICs")

VLAN_GRAMMAR = Map({
    "parent": Field(_name("the NIC or bond it is tagged on; default: the name's part before "
                          "the dot (bond0.10)")),
    "id": Field(Int(1, 4094, "VLAN id; default: the name's part after the dot")),
    **LAYER3,
}, "an 802.1Q VLAN on a NIC or a bond")

BRIDGE_GRAMMAR = Map({
    "ports": Field(List(_name(), "the NICs, bonds or VLANs on the bridge (required)", 1,
                        16)),
    "stp": Field(Bool("spanning tree"), default=False),
    "forward_delay": Field(Int(2, 30, f"seconds, with stp (default {DEFAULT_FORWARD_DELAY}); "
                               "without stp it is 0")),
    **LAYER3,
}, "a Linux bridge, e.g. one per guest network")

ROUTE_GRAMMAR = Map({
    "to": Field(Str(IPV4 + r"/[0-9]{1,2}", "destination network", what="an IPv4 network",
                    convert=lambda t: ipaddress.IPv4Network(t)), required=True),
    "via": Field(Str(IPV4, "gateway, inside the subnet of one of the host's devices",
                     what="an IPv4 address", convert=ipv4_address), required=True),
}, "a static route (route-<device>)")

INSTALL_GRAMMAR = Map({
    "nic": Field(_name("the NIC the installer uses (default: the NIC with the host's `mac`, "
                       "else the first NIC; without NICs the host's `mac`, else the first "
                       "NIC with a link)")),
    "address": Field(Str(r"dhcp|" + IPV4 + r"/[0-9]{1,2}", "address/prefix or dhcp",
                         what="an IPv4 address/prefix or dhcp", convert=_address),
                     default="dhcp"),
    "gateway": Field(Str(IPV4, what="an IPv4 address", convert=ipv4_address)),
    "dns": Field(List(Str(IPV4, what="an IPv4 address", convert=ipv4_address),
                      "name servers", max_items=3), default=()),
}, "the installer's network: one NIC, untagged (as PXE needs it), DHCP unless given")

NETWORK = Map({
    "nics": Field(Dict(_name(), NIC_GRAMMAR, "NICs by name"), default={}),
    "bonds": Field(Dict(_name(), BOND_GRAMMAR, "bonds by name (bond0)"), default={}),
    "vlans": Field(Dict(_name(), VLAN_GRAMMAR, "VLANs by name (bond0.10)"), default={}),
    "bridges": Field(Dict(_name(), BRIDGE_GRAMMAR, "bridges by name (br0)"), default={}),
    "routes": Field(List(ROUTE_GRAMMAR, "static routes", max_items=64), default=()),
    "dns": Field(List(Str(IPV4, what="an IPv4 address", convert=ipv4_address),
                      "name servers", max_items=3), default=()),
    "search": Field(List(Str(DOMAIN, what="a domain name"), "DNS search domains",
                         max_items=6), default=()),
    "default_route": Field(Str(IFACE, "the device that holds the default route, or none; "
                               "default: the device with a gateway, else the first with DHCP",
                               what="an interface name or none")),
    "install": Field(INSTALL_GRAMMAR),
}, "the host's network, installed as ifcfg files by %post")


# ---------------------------------------------------------------------------------------------
# Building the model, with the checks. Each error points at the key that is wrong.


def _at(loc: Located, *keys: str) -> Located:
    """The located value at keys below loc, or the deepest one that exists."""
    for key in keys:
        if not isinstance(loc.value, dict) or key not in loc.value:
            break
        loc = loc.value[key]
    return loc


def build(parsed: dict[str, Any], loc: Located, host_mac: str | None) -> Network:
    """The model of a parsed `network:` mapping (loc: where it was written, for errors)."""
    devices: dict[str, Device] = {}
    where: dict[str, Located] = {}

    def add(kind_key: str, name: str, device: Device) -> None:
        spot = _at(loc, kind_key, name)
        if name in devices:
            raise spot.error(f"{name} is already defined as a {devices[name].kind}")
        devices[name] = device
        where[name] = spot

    for name, nic in parsed["nics"].items():
        add("nics", name, Device(name, NIC, nic["device"] or (None if nic["mac"] else name),
                                 mac=nic["mac"], **_layer3(nic)))
    for name, bond in parsed["bonds"].items():
        _require(bond, "slaves", _at(loc, "bonds", name))
        add("bonds", name, Device(name, BOND, name, slaves=bond["slaves"],
                                  bond_options=_bond_options(bond, _at(loc, "bonds", name)),
                                  **_layer3(bond)))
    for name, vlan in parsed["vlans"].items():
        parent, vlan_id = _vlan_parent(name, vlan, _at(loc, "vlans", name))
        add("vlans", name, Device(name, VLAN, name, parent=parent, vlan_id=vlan_id,
                                  **_layer3(vlan)))
    for name, bridge in parsed["bridges"].items():
        _require(bridge, "ports", _at(loc, "bridges", name))
        delay = bridge["forward_delay"]
        if delay is not None and not bridge["stp"]:
            raise _at(loc, "bridges", name, "forward_delay").error(
                "a forward delay needs stp: true (without STP it is 0)")
        add("bridges", name, Device(name, BRIDGE, name, ports=bridge["ports"],
                                    stp=bridge["stp"], forward_delay=(
                                        delay or DEFAULT_FORWARD_DELAY) if bridge["stp"] else 0,
                                    **_layer3(bridge)))
    _link(devices, where)
    _check_vlans(devices, where)
    _check_mtu(devices, where)
    _check_subnets(devices, where)
    devices = _default_route(devices, where, parsed["default_route"],
                             _at(loc, "default_route"))
    devices = _dns(devices, parsed["dns"], parsed["search"], loc)
    routes = _routes(devices, parsed["routes"], _at(loc, "routes"))
    install = _install(devices, parsed["install"], host_mac, _at(loc, "install"))
    return Network(tuple(devices.values()), routes, install)


def _require(fields: dict[str, Any], key: str, loc: Located) -> None:
    if fields[key] is None:
        raise loc.error(f"missing required key {key!r}")


def _layer3(fields: dict[str, Any]) -> dict[str, Any]:
    address = fields["address"]
    return {"address": None if address in (None, "dhcp") else address,
            "dhcp": address == "dhcp", "gateway": fields["gateway"], "mtu": fields["mtu"]}


def _bond_options(bond: dict[str, Any], loc: Located) -> tuple[tuple[str, str], ...]:
    mode = bond["mode"]
    if bond["lacp_rate"] and mode != "802.3ad":
        raise _at(loc, "lacp_rate").error("lacp_rate applies to mode 802.3ad only")
    if bond["xmit_hash_policy"] and mode not in ("balance-xor", "802.3ad"):
        raise _at(loc, "xmit_hash_policy").error(
            "xmit_hash_policy applies to modes balance-xor and 802.3ad only")
    if bond["primary"] and mode not in ("active-backup", "balance-tlb", "balance-alb"):
        raise _at(loc, "primary").error(
            "primary applies to modes active-backup, balance-tlb and balance-alb only")
    if bond["primary"] and bond["primary"] not in bond["slaves"]:
        raise _at(loc, "primary").error(f"{bond['primary']} is not one of the bond's slaves")
    options = [("mode", mode), ("miimon", str(bond["miimon"]))]
    options += [(key, bond[key]) for key in ("lacp_rate", "xmit_hash_policy", "primary")
                if bond[key]]
    return tuple(options)


def _vlan_parent(name: str, vlan: dict[str, Any], loc: Located) -> tuple[str, int]:
    base, dot, number = name.rpartition(".")
    parent = vlan["parent"] or (base if dot else None)
    vlan_id = vlan["id"] if vlan["id"] is not None else (
        int(number) if dot and number.isdigit() else None)
    if parent is None or vlan_id is None:
        raise loc.error("give parent and id, or name the VLAN <parent>.<id> (bond0.10)")
    if not 1 <= vlan_id <= 4094:
        raise loc.error(f"VLAN id {vlan_id} is not between 1 and 4094")
    return parent, vlan_id


def _link(devices: dict[str, Device], where: dict[str, Located]) -> None:
    """Who enslaves whom: every reference names a device of the right kind, and a device is
    enslaved at most once and then carries no address of its own."""
    allowed = {"slaves": (NIC,), "parent": (NIC, BOND), "ports": (NIC, BOND, VLAN)}
    what = {"slaves": "a bond's slaves are NICs", "parent": "a VLAN sits on a NIC or a bond",
            "ports": "a bridge's ports are NICs, bonds or VLANs"}
    masters: dict[str, str] = {}
    for name, device in list(devices.items()):
        for key, members in (("slaves", device.slaves), ("ports", device.ports),
                             ("parent", (device.parent,) if device.parent else ())):
            for member in members:
                spot = _at(where[name], key)
                if member not in devices:
                    raise spot.error(f"{member} is not defined (nics, bonds, vlans, bridges)")
                if devices[member].kind not in allowed[key]:
                    raise spot.error(f"{member} is a {devices[member].kind}: {what[key]}")
                if member == name:
                    raise spot.error(f"{name} cannot contain itself")
                if key == "parent":
                    continue
                if member in masters:
                    raise spot.error(f"{member} is already enslaved to {masters[member]}")
                if devices[member].has_address or devices[member].gateway:
                    raise spot.error(f"{member} has an address: an enslaved device has none "
                                     "(the address goes on its master)")
                masters[member] = name
                devices[member] = replace(devices[member], master=name)
        if device.kind == VLAN and devices[device.parent or ""].device is None:
            raise _at(where[name], "parent").error(
                f"{device.parent} is picked by MAC only: a VLAN needs its parent's kernel "
                "name (give the NIC `device:`)")
    for name, device in devices.items():
        if device.kind == VLAN and device.parent in masters:
            raise where[name].error(f"{device.parent} is enslaved to {masters[device.parent]}"
                                    ": a VLAN goes on the master, not on a slave")


def _check_vlans(devices: dict[str, Device], where: dict[str, Located]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for name, device in devices.items():
        if device.kind != VLAN:
            continue
        key = (device.parent or "", device.vlan_id or 0)
        if key in seen:
            raise where[name].error(f"VLAN id {device.vlan_id} on {device.parent} is already "
                                    f"{seen[key]}")
        seen[key] = name


def mtu_of(devices: dict[str, Device] | Network, name: str) -> int:
    device = devices[name]
    return device.mtu or DEFAULT_MTU


def _check_mtu(devices: dict[str, Device], where: dict[str, Located]) -> None:
    for name, device in devices.items():
        parents = [device.parent] if device.parent else list(device.ports)
        for parent in parents:
            if mtu_of(devices, name) > mtu_of(devices, parent):
                raise _at(where[name], "mtu").error(
                    f"MTU {mtu_of(devices, name)} is above {parent}'s "
                    f"{mtu_of(devices, parent)}")


def _check_subnets(devices: dict[str, Device], where: dict[str, Located]) -> None:
    seen: dict[str, ipaddress.IPv4Interface] = {}
    for name, device in devices.items():
        if device.address is None:
            continue
        for other, address in seen.items():
            if address.network.overlaps(device.address.network):
                raise _at(where[name], "address").error(
                    f"{device.address.network} overlaps {other}'s {address.network}")
        seen[name] = device.address
        if device.gateway is not None:
            _check_gateway(device.gateway, device.address, _at(where[name], "gateway"))


def _check_gateway(gateway: ipaddress.IPv4Address, address: ipaddress.IPv4Interface,
                   loc: Located) -> None:
    if gateway not in address.network:
        raise loc.error(f"{gateway} is not inside {address.network}")
    if gateway == address.ip:
        raise loc.error(f"{gateway} is the host's own address")


def _default_route(devices: dict[str, Device], where: dict[str, Located], chosen: str | None,
                   loc: Located) -> dict[str, Device]:
    """Exactly one device holds the default route, or none: the one named, else the one with
    a gateway, else the first with DHCP. Every other DHCP device gets DEFROUTE=no."""
    gateways = [name for name, device in devices.items() if device.gateway is not None]
    if len(gateways) > 1:
        raise _at(where[gateways[1]], "gateway").error(
            f"a second default route ({gateways[0]} has a gateway already); use routes")
    for name in gateways:
        if devices[name].address is None:
            raise _at(where[name], "gateway").error("a gateway needs a static address")
    if chosen == "none":
        if gateways:
            raise loc.error(f"default_route is none but {gateways[0]} has a gateway")
        return devices
    if chosen is not None:
        if chosen not in devices:
            raise loc.error(f"{chosen} is not defined")
        if gateways and gateways[0] != chosen:
            raise loc.error(f"{gateways[0]} has the gateway: the default route is there")
        if not devices[chosen].dhcp and devices[chosen].gateway is None:
            raise loc.error(f"{chosen} needs dhcp or a gateway to hold the default route")
    else:
        dhcp = [name for name, device in devices.items() if device.dhcp]
        chosen = next(iter(gateways or dhcp), None)
    if chosen is not None:
        devices[chosen] = replace(devices[chosen], default_route=True)
    return devices


def _dns(devices: dict[str, Device], dns: tuple[Any, ...], search: tuple[str, ...],
         loc: Located) -> dict[str, Device]:
    """Name servers and search domains go into one ifcfg file (initscripts and NM read
    DNSn/DOMAIN from any): the default route's device, else the first with an address."""
    if not dns and not search:
        return devices
    holders = [n for n, d in devices.items() if d.default_route] or [
        n for n, d in devices.items() if d.has_address]
    if not holders:
        raise _at(loc, "dns" if dns else "search").error(
            "name servers need a device with an address")
    devices[holders[0]] = replace(devices[holders[0]], dns=dns, search=search)
    return devices


def _routes(devices: dict[str, Device], given: tuple[dict[str, Any], ...],
            loc: Located) -> tuple[Route, ...]:
    routes = []
    for index, route in enumerate(given):
        spot = loc.value[index] if isinstance(loc.value, list) else loc
        holder = next((name for name, device in devices.items() if device.address
                       and route["via"] in device.address.network), None)
        if holder is None:
            raise _at(spot, "via").error(f"{route['via']} is not inside any subnet of the "
                                         "host's static addresses")
        if route["via"] == devices[holder].address.ip:  # type: ignore[union-attr]
            raise _at(spot, "via").error(f"{route['via']} is the host's own address")
        routes.append(Route(route["to"], route["via"], holder))
    return tuple(routes)


def _install(devices: dict[str, Device], given: dict[str, Any] | None, host_mac: str | None,
             loc: Located) -> Install:
    given = given or {"nic": None, "address": "dhcp", "gateway": None, "dns": ()}
    nics = [d for d in devices.values() if d.kind == NIC]
    if given["nic"] is not None:
        if given["nic"] not in devices or devices[given["nic"]].kind != NIC:
            raise _at(loc, "nic").error(f"{given['nic']} is not one of the host's nics")
        nic: Device | None = devices[given["nic"]]
    else:
        nic = next((d for d in nics if host_mac and d.mac == host_mac), None) or (
            nics[0] if nics else None)
    address = None if given["address"] == "dhcp" else given["address"]
    if given["gateway"] is not None:
        if address is None:
            raise _at(loc, "gateway").error("a gateway needs a static address")
        _check_gateway(given["gateway"], address, _at(loc, "gateway"))
    device = (host_mac or "link") if nic is None else (nic.mac or nic.device or nic.name)
    return Install(device, nic.name if nic else None, address, given["gateway"], given["dns"])


@lru_cache(maxsize=256)
def _slave_nic(name: str, bridge: str) -> Device:
    """A bridge's slave NIC: one object for every host with the same slave in the same
    bridge (most of a fleet), stored and unpickled once by the site cache (issue 16)."""
    return Device(name, NIC, name, master=bridge)


def from_bridges(bridges: tuple[Any, ...], host_mac: str | None) -> Network:
    """The legacy `bridge`/`bridges` keys as the same model (checked by the site loader):
    each slave a NIC by kernel name, each bridge with its own address and name servers.
    Their `network` lines bring the bridges up at install time; a host with neither bridges
    nor `network` gets DHCP on its install NIC (the host's `mac`, else the first with link)."""
    if not bridges:
        return Network((), (), Install(host_mac or "link", None, None, None, ()))
    devices: list[Device] = []
    gateway = next((b.name for b in bridges if b.gateway), None)
    default = gateway or next((b.name for b in bridges if b.address is None), None)
    for bridge in bridges:
        devices += [_slave_nic(slave, bridge.name) for slave in bridge.slaves]
        delay = (bridge.forward_delay or DEFAULT_FORWARD_DELAY) if bridge.stp else 0
        devices.append(Device(
            bridge.name, BRIDGE, bridge.name, address=bridge.address,
            dhcp=bridge.address is None, gateway=bridge.gateway,
            default_route=bridge.name == default, dns=bridge.dns, ports=bridge.slaves,
            stp=bridge.stp, forward_delay=delay))
    return Network(tuple(devices), (), None)
