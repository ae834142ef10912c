"""A host's network as EL7 writes it: the installer's `network` lines, and the final
/etc/sysconfig/network-scripts files (ifcfg-<name>, route-<name>) that %post installs.

The keys are initscripts' (sysconfig.txt of initscripts 9.49, RHEL 7), which
NetworkManager 1.18's ifcfg-rh plugin reads too. What the installer does with each `network`
line is anaconda 21.48.22.159's and its dracut parse-kickstart's (docs/real-installer.md).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from builder.network import BOND, BRIDGE, NIC, VLAN, Device, Install, Network
from builder.site import Host

# ifcfg UUIDs: stable across builds, different for every (host, device).
UUID_NAMESPACE = uuid.UUID("6b1f4f8e-2a7c-5e0b-9c43-6b7362756901")
_NAMESPACE_BYTES = UUID_NAMESPACE.bytes
TYPES = {NIC: "Ethernet", BOND: "Bond", VLAN: "Vlan", BRIDGE: "Bridge"}


def ifcfg_uuid(hostname: str, device: str) -> str:
    """str(uuid.uuid5(UUID_NAMESPACE, "hostname/device")), without building a UUID object
    (a third of the cost of a host's ifcfg files): the name's SHA-1 with uuid5's version
    and variant bits, as 8-4-4-4-12 hex digits."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{hostname}/{device}".encode(),
                                    usedforsecurity=False).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50
    digest[8] = digest[8] & 0x3F | 0x80
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


@dataclass(frozen=True)
class Ifcfg:
    """One file of /etc/sysconfig/network-scripts (ifcfg-<device> or route-<device>), as
    ordered KEY=value lines."""

    device: str
    lines: tuple[tuple[str, str], ...]
    prefix: str = "ifcfg"

    @property
    def filename(self) -> str:
        return f"{self.prefix}-{self.device}"


def ifcfg_files(host: Host) -> tuple[Ifcfg, ...]:
    """Every ifcfg file, then every route file of the host."""
    network = host.network
    files = [Ifcfg(d.name, tuple(_lines(host.hostname, network, d))) for d in network.devices]
    return tuple(files) + route_files(network)


def _lines(hostname: str, network: Network, device: Device) -> list[tuple[str, str]]:
    lines = [("TYPE", TYPES[device.kind]), ("NAME", device.name)]
    if device.device:
        lines.append(("DEVICE", device.device))
    if device.mac:
        lines.append(("HWADDR", device.mac))  # binds the file to the NIC, whatever its name
    lines += [("UUID", ifcfg_uuid(hostname, device.name)), ("ONBOOT", "yes")]
    if device.kind == BOND:
        options = " ".join(f"{key}={value}" for key, value in device.bond_options)
        lines += [("BONDING_MASTER", "yes"), ("BONDING_OPTS", f'"{options}"')]
    if device.kind == VLAN:
        parent = network[device.parent or ""].device or ""
        lines += [("VLAN", "yes"), ("PHYSDEV", parent), ("VLAN_ID", str(device.vlan_id))]
    if device.kind == BRIDGE:
        # NetworkManager 1.18.8 refuses a forward delay outside 2-30 s with STP on and
        # ignores DELAY with STP off (docs/real-installer.md, the sources cited there).
        lines += [("STP", "yes" if device.stp else "no"), ("DELAY", str(device.forward_delay))]
    master = network[device.master] if device.master else None
    if master is not None and master.kind == BOND:
        lines += [("MASTER", master.name), ("SLAVE", "yes")]
    elif master is not None:
        lines.append(("BRIDGE", master.name))
    lines += _address_lines(device)
    if device.mtu is not None:
        lines.append(("MTU", str(device.mtu)))
    return lines


def _address_lines(device: Device) -> list[tuple[str, str]]:
    if device.dhcp:
        lines = [("BOOTPROTO", "dhcp"), ("DEFROUTE", "yes" if device.default_route else "no")]
    elif device.address is not None:
        lines = [("BOOTPROTO", "static"), ("IPADDR", str(device.address.ip)),
                 ("PREFIX", str(device.address.network.prefixlen))]
        if device.gateway is not None:
            lines += [("GATEWAY", str(device.gateway)), ("DEFROUTE", "yes")]
        else:
            lines.append(("DEFROUTE", "no"))
    else:
        return [("BOOTPROTO", "none")]
    lines += [(f"DNS{n}", str(server)) for n, server in enumerate(device.dns, 1)]
    if device.search:
        lines.append(("DOMAIN", f'"{" ".join(device.search)}"'))
    return lines


def route_files(network: Network) -> tuple[Ifcfg, ...]:
    """route-<device> in the ADDRESSn/NETMASKn/GATEWAYn form (initscripts' ifup-routes and
    NetworkManager read both forms; this one has no `ip` syntax to get wrong)."""
    by_device: dict[str, list[tuple[str, str]]] = {}
    for route in network.routes:
        lines = by_device.setdefault(route.device, [])
        n = len(lines) // 3
        lines += [(f"ADDRESS{n}", str(route.to.network_address)),
                  (f"NETMASK{n}", str(route.to.netmask)), (f"GATEWAY{n}", str(route.via))]
    return tuple(Ifcfg(name, tuple(lines), "route") for name, lines in by_device.items())


def network_lines(host: Host) -> list[str]:
    """The installer's `network` commands. The first one is the install network: anaconda
    (pyanaconda/network.py apply_kickstart) and dracut's parse-kickstart (Network.dracut_args)
    activate the first line even without --activate, and dracut drops a line that sets only
    the hostname. The host name goes last, on a line of its own."""
    install = host.network.install
    if install is None:  # the legacy bridges
        lines = [_bridge_line(host, bridge) for bridge in host.network.bridges()]
    else:
        lines = [_install_line(install)]
    return [*lines, f"network --hostname={host.hostname}"]


def _install_line(install: Install) -> str:
    words = [f"--device={install.device}"]
    if install.address is None:
        words.append("--bootproto=dhcp")
    else:
        words += ["--bootproto=static", f"--ip={install.address.ip}",
                  f"--netmask={install.address.netmask}"]
        if install.gateway:
            words.append(f"--gateway={install.gateway}")
    if install.dns:
        words.append(f"--nameserver={','.join(str(d) for d in install.dns)}")
    return "network " + " ".join([*words, "--onboot=yes", "--activate"])


def _bridge_line(host: Host, bridge: Device) -> str:
    words = [f"--device={bridge.name}", f"--bridgeslaves={','.join(bridge.ports)}"]
    if bridge.address:
        words += ["--bootproto=static", f"--ip={bridge.address.ip}",
                  f"--netmask={bridge.address.netmask}"]
    else:
        words.append("--bootproto=dhcp")
    if bridge.gateway:
        words.append(f"--gateway={bridge.gateway}")
    elif not bridge.default_route:
        words.append("--nodefroute")
    if bridge.dns:
        words.append(f"--nameserver={','.join(str(d) for d in bridge.dns)}")
    # The installer's bridge gets NetworkManager's defaults (STP on, 15 s forward delay)
    # unless told: make it the same bridge as the installed one.
    opts = f"stp=yes,forward-delay={bridge.forward_delay}" if bridge.stp else "stp=no"
    words += [f"--bridgeopts={opts}", "--onboot=yes", "--activate"]
    return "network " + " ".join(words)


def anaconda_leftovers(host: Host, files: tuple[Ifcfg, ...]) -> dict[str, str]:
    """What %post needs to find the files anaconda wrote for the host's devices (under
    whatever names): our file names (`files`, as ifcfg_files gives them), the kernel names
    and the MACs of our devices, each space separated."""
    network = host.network
    return {
        "files": " ".join(f.filename for f in files),
        "devices": " ".join(d.device for d in network.devices if d.device),
        "macs": " ".join(network.macs),
    }
