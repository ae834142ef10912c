"""Kickstarts pass the RHEL 7.9 grammar (pykickstart 1.99.66.22) as well as pykickstart 3.x's
RHEL7 handler: each difference between the two that touches what ksbuild writes is named
here, and the stricter rule wins (docs/real-installer.md, "Kickstart grammar")."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import el7grammar, kickstart, site
from builder.errors import KsbuildError
from builder.media.kickstarts import dispatcher, for_iso
from tests.sitefiles import site_doc, write_site

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsb admin@example.com"
THREE_X = r"pykickstart \(RHEL7\) rejects it"
EL7 = r"the RHEL 7\.9 grammar \(pykickstart 1\.99\.66\.22\) rejects it"


@pytest.fixture(scope="module")
def validator() -> kickstart.Validator:
    return kickstart.Validator()


# (what differs, kickstart text, which rule refuses it)
DIFFERENCES = [
    # 1.99.66.22 has these, 3.x does not: 3.x is the stricter one, so they stay refused (and
    # ksbuild writes root_ssh_keys from %post instead of `sshkey`).
    ("sshkey is EL7-only", f'sshkey --username=root "{KEY}"\n', THREE_X),
    ("mount is EL7-only", "mount /dev/sdb1 /srv\n", THREE_X),
    ("firewall --use-system-defaults is EL7-only", "firewall --use-system-defaults\n", THREE_X),
    ("reboot --kexec is EL7-only", "reboot --kexec\n", THREE_X),
    ("poweroff --kexec is EL7-only", "poweroff --kexec\n", THREE_X),
    ("url --sslcacert is EL7-only", "url --url=https://x.example/ --sslcacert=/ca.pem\n",
     THREE_X),
    ("repo --sslclientkey is EL7-only",
     "repo --name=a --baseurl=https://x.example/ --sslclientkey=/k.pem\n", THREE_X),
    ("ignoredisk --nonfatal is EL7-only", "ignoredisk --only-use=sda --nonfatal\n", THREE_X),
    # 3.x warns (an error here) on a second `network --hostname`; 1.99.66.22 says nothing.
    ("a second network --hostname", "network --hostname=a.example.com\n"
                                     "network --hostname=b.example.com\n", THREE_X),
    # Commands and sections ksbuild has not checked against 1.99.66.22 are refused by the
    # strict table until someone does (3.x accepts these).
    ("an unchecked command", "mediacheck\n", EL7),
    ("an unchecked command", "vnc --password=x\n", EL7),
    ("an unchecked section", "%addon com_redhat_kdump --disable\n%end\n", EL7),
]


@pytest.mark.parametrize(("what", "text", "refused_by"), DIFFERENCES,
                         ids=[d[0] for d in DIFFERENCES])
def test_each_difference_is_refused_by_the_stricter_rule(
        validator: kickstart.Validator, what: str, text: str, refused_by: str) -> None:
    with pytest.raises(KsbuildError, match=refused_by):
        validator.validate(text, "x.cfg")


@pytest.mark.parametrize(("line", "option"), [
    # Options of later pykickstart versions, unknown to the 1.99.66.22 RHEL7 handler.
    ("autopart --type=lvm --noswap", "--noswap"),
    ("network --device=eth0 --bootproto=dhcp --ipv4-dns-search=example.com",
     "--ipv4-dns-search"),
    ("%packages --inst-langs=en", "--inst-langs"),
    ("%post --interpreter=/bin/bash --erroronfail --logfile=/root/x.log --nochroot --x", "--x"),
])
def test_the_strict_table_refuses_options_el7_lacks(line: str, option: str) -> None:
    """The table itself, without 3.x in front of it: these would pass it only if pykickstart
    3.x's RHEL7 handler ever gained the options."""
    text = line + ("\n@core\n%end\n" if line.startswith("%") else "\n")
    assert el7grammar.problem(text) == f"line 1: {line.split()[0]} has no option {option}"


def test_what_ksbuild_writes_is_in_both_grammars(validator: kickstart.Validator) -> None:
    """Every option the templates and the networking code write (including bonds, VLANs and
    bridges) is one 1.99.66.22 knows."""
    lines = [
        "install", "url --url=https://vault.centos.org/7.9.2009/os/x86_64/", "cdrom",
        "lang en_US.UTF-8", "keyboard --vckeymap=us", "timezone UTC --isUtc --ntpservers=a.b",
        "rootpw --iscrypted $6$a$b", "selinux --enforcing", "firewall --enabled --service=ssh",
        "network --device=bond0 --bondslaves=eth0,eth1 --bondopts=mode=802.3ad,miimon=100 "
        "--bootproto=dhcp --onboot=yes --no-activate --nodefroute",
        "network --device=eth3 --vlanid=10 --interfacename=vlan10 --bootproto=static "
        "--ip=10.0.0.2 --netmask=255.255.255.0 --gateway=10.0.0.1 --nameserver=10.0.0.1 "
        "--onboot=yes --activate",
        "network --device=br0 --bridgeslaves=eth2 --bridgeopts=stp=no,forward_delay=2 "
        "--bootproto=dhcp --onboot=yes --activate",
        "network --hostname=kvm1.example.com",
        "ignoredisk --only-use=sda", "bootloader --location=mbr --boot-drive=sda "
        '--append="net.ifnames=0 biosdevname=0"', "zerombr",
        "clearpart --all --initlabel --drives=sda", "autopart --type=thinp", "skipx",
        "firstboot --disabled", "eula --agreed", "poweroff --eject",
        "%packages", "@^virtualization-host-environment", "%end",
        "%pre --interpreter=/bin/bash --erroronfail --log=/tmp/x.log", "true", "%end",
        "%post --interpreter=/bin/bash --erroronfail --log=/root/x.log", "true", "%end",
        "%post --nochroot", "true", "%end", "%onerror --interpreter=/bin/bash", "true", "%end",
    ]
    text = "\n".join(lines) + "\n"
    validator.validate(text, "x.cfg")
    assert el7grammar.problem(text) is None
    assert el7grammar.problem("part / --size=1 --grow --fstype=xfs --ondisk=sda\n") is None


def test_the_per_site_dispatcher_passes_both_grammars(tmp_path: Path,
                                                      validator: kickstart.Validator) -> None:
    """Issue 10 item 11: /ks.cfg of a per-site ISO is `%include` plus a `%pre` that picks
    the host by MAC; anaconda parses it like any kickstart. (Checked once by hand against the
    real pykickstart 1.99.66.22 too: docs/real-installer.md.)"""
    loaded = site.load(write_site(tmp_path, site_doc()))
    text = dispatcher(list(loaded.hosts), "CentOS 7 x86_64")
    assert text.count("%include /tmp/ksbuild-host.cfg\n") == 1
    assert "%pre --erroronfail --log=/tmp/ksbuild-pick.log\n" in text
    validator.validate(text, "ks.cfg")
    assert el7grammar.problem(text) is None
    built = for_iso(kickstart.render_site(loaded), list(loaded.hosts), "CentOS 7 x86_64")
    assert built.ks_cfg == text.encode()


def test_a_broken_dispatcher_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """for_iso validates the dispatcher: the check above can fail."""
    loaded = site.load(write_site(tmp_path, site_doc()))
    broken = "%include /tmp/x\n%pre --erroronfail --loog=/x\n%end\n"
    monkeypatch.setattr("builder.media.kickstarts.dispatcher", lambda hosts, label: broken)
    with pytest.raises(KsbuildError, match=r"ks\.cfg \(the per-site dispatcher\)"):
        for_iso(kickstart.render_site(loaded), list(loaded.hosts), "CentOS 7 x86_64")
