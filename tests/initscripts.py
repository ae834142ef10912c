"""What RHEL 7's initscripts (9.49: `service network start`, ifup-eth, ifup-routes) do with a
folder of ifcfg-* and route-* files, written out as a shell script of `ip` commands and sysfs
writes that a test guest runs. The test's own reading of the files, independent of ksbuild:
it knows the keys of initscripts' sysconfig.txt and refuses any other, so a file the real
scripts would misread cannot pass by being ignored here.

Semantics followed (sysconfig.txt, ifup-eth, network-functions):
- only ONBOOT=yes files come up; DEVICE= names the interface, else HWADDR= finds it
  (get_device_by_hwaddr: the interface whose MAC it is, looked up at run time);
- a bond (BONDING_MASTER=yes / TYPE=Bond) is made through /sys/class/net/bonding_masters,
  BONDING_OPTS written to /sys/class/net/<bond>/bonding/<option> (mode first, while down),
  then each MASTER=<bond> SLAVE=yes interface, down, is added to its slaves;
- VLAN=yes makes <DEVICE> on PHYSDEV with VLAN_ID (PHYSDEV is brought up first);
- TYPE=Bridge makes the bridge, STP= and DELAY= (seconds) set; BRIDGE=<br> enslaves;
- MTU= on the interface; IPADDR/PREFIX (or NETMASK) added; GATEWAY becomes the default
  route unless DEFROUTE=no; route-<name> ADDRESSn/NETMASKn/GATEWAYn become routes on the
  interface, once it has its address;
- BOOTPROTO=dhcp is not supported here (the lab has no DHCP server): refused.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

KNOWN = {"TYPE", "NAME", "DEVICE", "HWADDR", "UUID", "ONBOOT", "BOOTPROTO", "BONDING_MASTER",
         "BONDING_OPTS", "MASTER", "SLAVE", "VLAN", "PHYSDEV", "VLAN_ID", "BRIDGE", "STP",
         "DELAY", "IPADDR", "PREFIX", "NETMASK", "GATEWAY", "DEFROUTE", "MTU", "DOMAIN",
         "DNS1", "DNS2", "DNS3"}


class IfcfgError(ValueError):
    pass


def parse(text: str, name: str) -> dict[str, str]:
    """KEY=value lines as the shell reads them (initscripts source the file)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise IfcfgError(f"{name}: not KEY=value: {line!r}")
        words = shlex.split(value)
        values[key] = words[0] if len(words) == 1 else " ".join(words)
    return values


@dataclass
class Config:
    name: str  # ifcfg-<name>
    values: dict[str, str]

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    @property
    def is_bond(self) -> bool:
        return self.get("BONDING_MASTER") == "yes" or self.get("TYPE") == "Bond"

    @property
    def is_vlan(self) -> bool:
        return self.get("VLAN") == "yes"

    @property
    def is_bridge(self) -> bool:
        return self.get("TYPE") == "Bridge"

    def device_expr(self) -> str:
        """Shell text giving the kernel name: DEVICE, else the interface with HWADDR."""
        if self.get("DEVICE"):
            return shlex.quote(self.get("DEVICE"))
        if self.get("HWADDR"):
            return f"$(by_hwaddr {shlex.quote(self.get('HWADDR').lower())})"
        raise IfcfgError(f"ifcfg-{self.name}: neither DEVICE nor HWADDR")


PRELUDE = """# initscripts' ifup, as ip commands (tests/initscripts.py)
set -e
by_hwaddr() {
    for dev in /sys/class/net/*; do
        [ -d "$dev" ] || continue  # bonding_masters is a file
        if [ "$(cat "$dev/address")" = "$1" ]; then echo "${dev##*/}"; return 0; fi
    done
    echo "no interface has MAC $1" >&2
    return 1
}
"""


def ifup_script(files: dict[str, str]) -> str:
    """The script that brings up every ONBOOT=yes ifcfg file of `files` (file name -> text)."""
    configs = {}
    for filename, text in sorted(files.items()):
        if filename.startswith("ifcfg-") and filename != "ifcfg-lo":
            config = Config(filename[6:], parse(text, filename))
            unknown = set(config.values) - KNOWN
            if unknown:
                raise IfcfgError(f"{filename}: keys this reading does not know: {unknown}")
            if config.get("BOOTPROTO", "none") not in ("none", "static"):
                raise IfcfgError(f"{filename}: BOOTPROTO={config.get('BOOTPROTO')}")
            if config.get("ONBOOT") == "yes":
                configs[config.name] = config
    routes = {f[6:]: parse(t, f) for f, t in files.items() if f.startswith("route-")}
    lines = [PRELUDE]
    names = {name: f"dev_{i}" for i, name in enumerate(configs)}
    for name, config in configs.items():
        lines.append(f"{names[name]}={config.device_expr()}")
    kernel = {name: f'"${var}"' for name, var in names.items()}
    devices = {config.get("DEVICE"): name for name, config in configs.items()
               if config.get("DEVICE")}

    def ref(device: str) -> str:
        """An interface a file names (MASTER=, PHYSDEV=, BRIDGE=): by its DEVICE=."""
        if device not in devices:
            raise IfcfgError(f"{device} is named but no ONBOOT=yes file has DEVICE={device}")
        return kernel[devices[device]]

    for config in configs.values():  # every master and parent a file names exists
        for key in ("MASTER", "PHYSDEV", "BRIDGE"):
            if config.get(key):
                ref(config.get(key))
    # Bonds, then their slaves.
    for name, config in configs.items():
        if not config.is_bond:
            continue
        dev = kernel[name]
        lines.append(f"echo +{dev} > /sys/class/net/bonding_masters")
        options = dict(o.split("=", 1) for o in config.get("BONDING_OPTS").split())
        for key in ["mode", *(k for k in options if k != "mode")]:
            if key in options:
                lines.append(f"echo {shlex.quote(options[key])} > "
                             f"/sys/class/net/{dev}/bonding/{key}")
        for slave_name, slave in configs.items():
            if slave.get("MASTER") and ref(slave.get("MASTER")) == dev:
                if slave.get("SLAVE") != "yes":
                    raise IfcfgError(f"ifcfg-{slave_name}: MASTER= without SLAVE=yes")
                lines.append(f"ip link set dev {kernel[slave_name]} down")
                lines.append(f"echo +{kernel[slave_name]} > /sys/class/net/{dev}/bonding/slaves")
    # MTU and up, lower layers first: NICs and bonds, then VLANs, then bridges.
    for name, config in configs.items():
        if not (config.is_vlan or config.is_bridge):
            lines += _mtu_up(kernel[name], config)
    for name, config in configs.items():
        if config.is_vlan:
            lines.append(f"ip link add link {ref(config.get('PHYSDEV'))} name {kernel[name]} "
                         f"type vlan id {int(config.get('VLAN_ID'))}")
            lines += _mtu_up(kernel[name], config)
    for name, config in configs.items():
        if config.is_bridge:
            dev = kernel[name]
            lines.append(f"ip link add name {dev} type bridge")
            stp = 1 if config.get("STP", "no") == "yes" else 0
            delay = int(config.get("DELAY", "0"))
            lines.append(f"echo {stp} > /sys/class/net/{dev}/bridge/stp_state")
            lines.append(f"echo {delay * 100} > /sys/class/net/{dev}/bridge/forward_delay")
            for port_name, port in configs.items():
                if port.get("BRIDGE") and ref(port.get("BRIDGE")) == dev:
                    lines.append(f"ip link set dev {kernel[port_name]} master {dev}")
            lines += _mtu_up(dev, config)
    # Addresses, default route, static routes.
    for name, config in configs.items():
        lines += _addresses(kernel[name], config, routes.get(name, {}))
    return "\n".join(lines) + "\n"


def _mtu_up(dev: str, config: Config) -> list[str]:
    lines = [f"ip link set dev {dev} mtu {int(config.get('MTU'))}"] if config.get("MTU") else []
    return [*lines, f"ip link set dev {dev} up"]


def _addresses(dev: str, config: Config, routes: dict[str, str]) -> list[str]:
    if not config.get("IPADDR"):
        if config.get("GATEWAY") or routes:
            raise IfcfgError(f"ifcfg-{config.name}: a gateway or routes without an address")
        return []
    prefix = config.get("PREFIX") or str(
        ipaddress.IPv4Network(f"0.0.0.0/{config.get('NETMASK')}").prefixlen)
    lines = [f"ip addr add {config.get('IPADDR')}/{prefix} dev {dev}"]
    if config.get("GATEWAY") and config.get("DEFROUTE", "yes") != "no":
        lines.append(f"ip route add default via {config.get('GATEWAY')} dev {dev}")
    number = 0
    while f"ADDRESS{number}" in routes:  # ifup-routes stops at the first gap
        network = ipaddress.IPv4Network(
            f"{routes[f'ADDRESS{number}']}/{routes.get(f'NETMASK{number}', '255.255.255.255')}")
        lines.append(f"ip route add {network} via {routes[f'GATEWAY{number}']} dev {dev}")
        number += 1
    return lines
