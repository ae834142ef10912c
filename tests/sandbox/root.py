"""A throwaway root folder shaped like a freshly installed CentOS 7, just before %post runs.

It holds bash (the host's, with the libraries ldd names), a static busybox for the usual
command-line tools, stand-ins (stubs/) for systemctl and firewall-offline-cmd, for curl (no
network here) and sleep (no waiting), and the files a %post of ours reads or changes, as
CentOS 7 ships them. What anaconda itself writes from the kickstart (the bridge's ifcfg
files) is added by `seed_anaconda_network`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from builder.run import run

STUBS = Path(__file__).resolve().parent / "stubs"

# Tools a CentOS 7 minimal install has, provided here by busybox. Deliberately no network
# tools and nothing that reboots or mounts: a script that needs more fails loudly
# ("command not found") and the list grows on purpose, not by accident.
BUSYBOX_TOOLS = (
    "awk", "base64", "basename", "cat", "chgrp", "chmod", "chown", "cmp", "cp", "cut", "date",
    "diff", "dirname", "echo", "egrep", "env", "expr", "false", "fgrep", "find", "grep",
    "head", "id", "install", "ln", "ls", "md5sum", "mkdir", "mktemp", "mv", "printf",
    "readlink", "realpath", "rm", "rmdir", "sed", "seq", "sha256sum", "sort", "stat",
    "tail", "tee", "test", "touch", "tr", "true", "uname", "uniq", "wc", "xargs"
)

# /etc/selinux/config as CentOS 7's selinux-policy writes it: a leading blank line, comment
# lines that mention SELINUX= and SELINUXTYPE=, a trailing space after "protected.".
SELINUX_CONFIG = """
# This file controls the state of SELinux on the system.
# SELINUX= can take one of these three values:
#     enforcing - SELinux security policy is enforced.
#     permissive - SELinux prints warnings instead of enforcing.
#     disabled - No SELinux policy is loaded.
SELINUX=enforcing
# SELINUXTYPE= can take one of three values:
#     targeted - Targeted processes are protected,
#     minimum - Modification of targeted policy. Only selected processes are protected. 
#     mls - Multi Level Security protection.
SELINUXTYPE=targeted


"""  # noqa: W291 -- the shipped file has those trailing spaces

FIREWALLD_UNIT = """[Unit]
Description=firewalld - dynamic firewall daemon
Before=network-pre.target
Wants=network-pre.target
After=dbus.service
After=polkit.service
Conflicts=iptables.service ip6tables.service ebtables.service ipset.service
Documentation=man:firewalld(1)

[Service]
EnvironmentFile=-/etc/sysconfig/firewalld
ExecStart=/usr/sbin/firewalld --nofork --nopid $FIREWALLD_ARGS
ExecReload=/bin/kill -HUP $MAINPID
# supress to log debug and error output also to /var/log/messages
StandardOutput=null
StandardError=null
Type=dbus
BusName=org.fedoraproject.FirewallD1
KillMode=mixed

[Install]
WantedBy=multi-user.target
Alias=dbus-org.fedoraproject.FirewallD1.service
"""

PUBLIC_ZONE = """<?xml version="1.0" encoding="utf-8"?>
<zone>
  <short>Public</short>
  <description>For use in public areas. You do not trust the other computers on networks \
to not harm your computer. Only selected incoming connections are accepted.</description>
  <service name="ssh"/>
  <service name="dhcpv6-client"/>
</zone>
"""

# A sample of the services firewalld 0.6 (CentOS 7) defines in /usr/lib/firewalld/services/.
FIREWALLD_SERVICES = (
    "cockpit", "dhcp", "dhcpv6-client", "dns", "ftp", "http", "https", "libvirt",
    "libvirt-tls", "mountd", "nfs", "nfs3", "ntp", "rpc-bind", "samba", "snmp", "ssh",
    "syslog", "vnc-server",
)

IFCFG_LO = """DEVICE=lo
IPADDR=127.0.0.1
NETMASK=255.0.0.0
NETWORK=127.0.0.0
# If you're having problems with gated making 127.0.0.0/8 a martian,
# you can change this to something else (255.255.255.255, for example)
BROADCAST=127.255.255.255
ONBOOT=yes
NAME=loopback
"""

# The stock repo files of CentOS 7.9's centos-release (reconstructed: same repo ids, URLs
# and keys; comments shortened). Base and fasttrack name the dead mirrors; Media does not.
CENTOS_BASE_REPO = """# CentOS-Base.repo
#
# The mirror system uses the connecting IP address of the client and the
# update status of each mirror to pick mirrors that are updated to and
# geographically close to the client.

[base]
name=CentOS-$releasever - Base
mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=os&infra=$infra
#baseurl=http://mirror.centos.org/centos/$releasever/os/$basearch/
gpgcheck=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7

#released updates
[updates]
name=CentOS-$releasever - Updates
mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=updates&infra=$infra
#baseurl=http://mirror.centos.org/centos/$releasever/updates/$basearch/
gpgcheck=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7

#additional packages that may be useful
[extras]
name=CentOS-$releasever - Extras
mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=extras&infra=$infra
#baseurl=http://mirror.centos.org/centos/$releasever/extras/$basearch/
gpgcheck=1
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7

#additional packages that extend functionality of existing packages
[centosplus]
name=CentOS-$releasever - Plus
mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=centosplus&infra=$infra
#baseurl=http://mirror.centos.org/centos/$releasever/centosplus/$basearch/
gpgcheck=1
enabled=0
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7
"""  # noqa: E501 -- the shipped lines are that long
CENTOS_FASTTRACK_REPO = """[fasttrack]
name=CentOS-7 - fasttrack
mirrorlist=http://mirrorlist.centos.org/?release=$releasever&arch=$basearch&repo=fasttrack&infra=$infra
#baseurl=http://mirror.centos.org/centos/$releasever/fasttrack/$basearch/
gpgcheck=1
enabled=0
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7
"""  # noqa: E501
CENTOS_MEDIA_REPO = """[c7-media]
name=CentOS-$releasever - Media
baseurl=file:///media/CentOS/
        file:///media/cdrom/
        file:///media/cdrecorder/
gpgcheck=1
enabled=0
gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7
"""

FILES: dict[str, str] = {
    "etc/yum.repos.d/CentOS-Base.repo": CENTOS_BASE_REPO,
    "etc/yum.repos.d/CentOS-fasttrack.repo": CENTOS_FASTTRACK_REPO,
    "etc/yum.repos.d/CentOS-Media.repo": CENTOS_MEDIA_REPO,
    "etc/hostname": "localhost.localdomain\n",
    "etc/selinux/config": SELINUX_CONFIG,
    "etc/sysconfig/network": "# Created by anaconda\n",
    "etc/sysconfig/network-scripts/ifcfg-lo": IFCFG_LO,
    "etc/firewalld/firewalld.conf": "DefaultZone=public\nIPv6_rpfilter=yes\n",
    "usr/lib/systemd/system/firewalld.service": FIREWALLD_UNIT,
    "usr/lib/firewalld/zones/public.xml": PUBLIC_ZONE,
    "usr/share/zoneinfo/UTC": "TZif2 (stand-in for the UTC zone file)\n",
}

# CentOS 7 links: merged /usr, /etc/sysconfig/selinux, and firewalld enabled by its preset.
LINKS: dict[str, str] = {
    "bin": "usr/bin",
    "sbin": "usr/sbin",
    "lib": "usr/lib",
    "lib64": "usr/lib64",
    "etc/sysconfig/selinux": "../selinux/config",
    "etc/localtime": "../usr/share/zoneinfo/UTC",
    "etc/systemd/system/multi-user.target.wants/firewalld.service":
        "/usr/lib/systemd/system/firewalld.service",
    "etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service":
        "/usr/lib/systemd/system/firewalld.service",
}

# usr/local/sbin: CentOS 7's `filesystem` package has it (the first-boot script goes there).
DIRS = ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/local/sbin", "etc/firewalld/zones",
        "etc/firewalld/services", "etc/systemd/system", "dev", "proc", "root", "tmp",
        "var/log", ".sandbox")


def build_root(root: Path) -> None:
    """A CentOS 7 shaped tree at `root` (new, or holding only other roots)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in DIRS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for link, target in LINKS.items():
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(target)
    for name, text in FILES.items():
        _write(root / name, text.encode())
    for service in FIREWALLD_SERVICES:
        _write(root / f"usr/lib/firewalld/services/{service}.xml",
               f'<?xml version="1.0" encoding="utf-8"?>\n<service>\n  <short>{service}'
               "</short>\n</service>\n".encode())
    os.chmod(root / "root", 0o550)
    os.chmod(root / "tmp", 0o1777)
    # The mount point for the real /dev/null (bind-mounted when the sandbox runs).
    (root / "dev/null").touch()
    _write(root / ".sandbox/calls", b"")
    install_tools(root)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def install_tools(root: Path) -> None:
    bash = host_program("bash")
    _copy(bash, root / "usr/bin/bash")
    for library in shared_libraries(bash):
        _copy(library, root / library.relative_to("/"))
    (root / "usr/bin/sh").symlink_to("bash")
    _copy(host_program("busybox"), root / "usr/sbin/busybox")
    for tool in BUSYBOX_TOOLS:
        (root / "usr/bin" / tool).symlink_to("../sbin/busybox")
    for stub in STUBS.iterdir():
        _copy(stub, root / "usr/bin" / stub.name)


def host_program(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (see tests/debian-packages.txt)")
    return Path(found).resolve()


def shared_libraries(program: Path) -> Iterable[Path]:
    """The libraries and loader a dynamic program needs, by the paths it looks them up at."""
    listing = run(["ldd", program], check=False).stdout.decode()
    for line in listing.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            yield Path(match.group(1))


def _copy(source: Path, target: Path) -> None:
    """Copy the bytes behind `source` to `target`, through the root's own symlinks (lib ->
    usr/lib), keeping the executable bits."""
    real = target.parent.resolve() / target.name
    real.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, real)
    os.chmod(real, stat.S_IMODE(source.stat().st_mode) | 0o444)
