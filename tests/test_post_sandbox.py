"""The %post scripts do what they claim: each is run for real in a sandbox (tests/sandbox)
and what it leaves behind is checked against the site, for the example site and a varied
generated one. Broken copies of the templates prove the checks can fail."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pykickstart.constants import KS_SCRIPT_ONERROR, KS_SCRIPT_PRE
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL7, makeVersion

from builder.kickstart import Renderer, render_site, template_dir
from builder.overlay import Overlay, OverlayDir, OverlayFile, OverlayTree
from builder.run import run
from builder.site import Host, Site, load
from tests.conftest import REPO
from tests.sandbox import Sandbox, post_scripts
from tests.sandbox.checks import check_firewall, check_host, zone_services
from tests.sandbox.isolation import MODES
from tests.sandbox.root import FILES, STUBS
from tests.sandbox.tree import snapshot

EXAMPLE = REPO / "kickstarts/site.yaml"
FLEET = REPO / "kickstarts/fleet.yaml"  # the LACP + VLAN + bridges example
HASH = ("$6$ksbuildexample$QjxFPRYKzPP5427c/UElsobtSR1I2HT8q//HWLvV5ohvqmL1n2TXss6FPP4xC3"
        "vpLTPXIonQUOmaMzB7L1JAv1")


def machine_nics(host: Host) -> dict[str, str]:
    """The NICs of the machine a host installs on: kernel name -> MAC. NICs the site picks
    by MAC get a slot name the site never mentions (the kernel's choice, as on real EL7
    hardware); the host's install `mac` is one of them."""
    nics: dict[str, str] = {}
    for number, device in enumerate(host.network.devices):
        if device.kind == "nic":
            nics[device.device or f"enp{number + 1}s0f0"] = device.mac or (
                f"52:54:00:ee:00:{number:02x}")
    if host.mac and host.mac not in nics.values():
        nics["eno9"] = host.mac
    return nics


def install(folder: Path, kickstart: str, mode: str | None = None,
            host: Host | None = None) -> Sandbox:
    box = Sandbox(folder, mode)
    box.seed_anaconda_network(kickstart, machine_nics(host) if host else None)
    result = box.install(kickstart)
    assert result.ok, result.report()
    return box


def overlay_of(site: Site, host: Host) -> Overlay:
    return OverlayTree(site.overlays).for_host(host.hostname)


# --- the example site ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("example", [EXAMPLE, FLEET], ids=["site", "fleet"])
def test_example_site_post_leaves_what_it_claims(tmp_path: Path, mode: str,
                                                 example: Path) -> None:
    site = load(example)
    for hostname, kickstart in render_site(site).items():
        host = site.host(hostname)
        box = install(tmp_path / hostname, kickstart, mode, host)
        assert check_host(box, host, overlay_of(site, host)) == []
        assert (box.target / "root/ksbuild-post.log").read_text().endswith(
            "ksbuild: %post done\n")


# --- a varied generated site -----------------------------------------------------------------

OVERLAY_FILES = {
    # path in the overlay root: (content, mode in the tree)
    "common/etc/motd": (b"Managed by ksbuild.\n", 0o644),
    "common/etc/ksbuild/empty.conf": (b"", 0o644),
    "common/etc/ksbuild/blob.bin": (bytes(range(256)) * 3 + b"no newline at the end", 0o644),
    "common/etc/ksbuild/secret": (b"token=abc\n", 0o644),
    "common/usr/local/bin/ksb-hello": (b"#!/bin/sh\necho hello\n", 0o755),
    # A symlink on CentOS 7 (to ../usr/share/zoneinfo/<zone>): the overlay's file must
    # replace the link, not overwrite the shared zone file behind it.
    "common/etc/localtime": (b"TZif2 our own zone\n", 0o644),
    "hosts/kvm1.example.com/root/.ssh/authorized_keys": (b"ssh-ed25519 AAAAC3Nz kvm1\n", 0o644),
    "hosts/kvm2.example.com/etc/motd": (b"kvm2: the host's own motd wins.\n", 0o644),
}
MODES_FILE = "root/.ssh 0700\nroot/.ssh/authorized_keys 0600\netc/ksbuild 0750\n" \
             "etc/ksbuild/secret 0600\n"


def expected_overlay(hostname: str) -> Overlay:
    """Written out by hand from OVERLAY_FILES and MODES_FILE: the overlay rules, not their
    implementation."""
    common = {
        "/etc/motd": (b"Managed by ksbuild.\n", 0o644),
        "/etc/ksbuild/empty.conf": (b"", 0o644),
        "/etc/ksbuild/blob.bin": (OVERLAY_FILES["common/etc/ksbuild/blob.bin"][0], 0o644),
        "/etc/ksbuild/secret": (b"token=abc\n", 0o600),
        "/usr/local/bin/ksb-hello": (b"#!/bin/sh\necho hello\n", 0o755),
        "/etc/localtime": (b"TZif2 our own zone\n", 0o644),
    }
    dirs = [OverlayDir("/etc/ksbuild", 0o750)]
    if hostname == "kvm1.example.com":
        common["/root/.ssh/authorized_keys"] = (b"ssh-ed25519 AAAAC3Nz kvm1\n", 0o600)
        dirs.append(OverlayDir("/root/.ssh", 0o700))
    if hostname == "kvm2.example.com":
        common["/etc/motd"] = (b"kvm2: the host's own motd wins.\n", 0o644)
    files = tuple(OverlayFile(path, mode, content)
                  for path, (content, mode) in sorted(common.items()))
    return Overlay(tuple(dirs), files)


GENERATED = {
    "overlays": "overlays",
    "defaults": {"root_password_hash": HASH, "source": "cdrom"},
    "hosts": [
        {"hostname": "kvm1.example.com", "selinux": "enforcing",
         "firewall": {"enabled": True, "services": ["ssh", "http", "libvirt", "vnc-server"]},
         "bridges": [
             {"name": "br0", "slaves": ["eth0", "eth1"], "address": "10.1.0.11/24",
              "gateway": "10.1.0.1", "dns": ["10.1.0.2", "10.1.0.3", "10.1.0.4"], "stp": True},
             {"name": "br1", "slaves": ["eth2"]},
             {"name": "br2", "slaves": ["eth3", "eth4", "eth5"], "address": "10.3.0.11/16"},
         ]},
        {"hostname": "kvm2.example.com", "selinux": "permissive",
         "firewall": {"enabled": False},
         "root_ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsb admin@example.com",
                           "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCksb= backup"],
         "bridge": {"name": "br0", "slaves": ["eno1"], "address": "192.168.7.12/24",
                    "gateway": "192.168.7.1", "dns": ["192.168.7.1"]}},
        {"hostname": "kvm3.example.com", "selinux": "disabled",
         "root_ssh_keys": ["ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYksb"],
         "firewall": {"enabled": True},
         "bridges": [{"name": "virbr9", "slaves": ["ens3"], "address": "172.16.5.13/20"}]},
        # The network model: bonds of NICs by MAC and by name, VLANs on a bond and on a
        # NIC, bridges on a VLAN, a bond and a NIC, DHCP beside a static default route,
        # MTUs, routes on two devices, DNS and search domains.
        {"hostname": "kvm4.example.com", "mac": "52:54:00:04:00:01",
         "network": {
             "nics": {"nic1": {"mac": "52:54:00:04:00:01"}, "nic2": {"mac": "52:54:00:04:00:02"},
                      "em3": {}, "em4": {"mac": "52:54:00:04:00:04", "device": "em4"},
                      "p1p1": {"address": "203.0.113.4/28", "mtu": 9000}},
             "bonds": {"bond0": {"slaves": ["nic1", "nic2"], "mode": "802.3ad",
                                 "lacp_rate": "fast", "xmit_hash_policy": "layer2+3",
                                 "mtu": 9000},
                       "bond1": {"slaves": ["em3"], "mode": "active-backup",
                                 "primary": "em3", "miimon": 200}},
             "vlans": {"bond0.10": {"mtu": 1500}, "vlan20": {"parent": "bond0", "id": 20},
                       "bond0.30": {"address": "198.51.100.4/24", "mtu": 9000},
                       "em4.99": {"address": "dhcp"}},
             "bridges": {"br-mgmt": {"ports": ["bond0.10"], "address": "192.0.2.4/24",
                                     "gateway": "192.0.2.1"},
                         "br-guest": {"ports": ["vlan20"], "stp": True, "forward_delay": 4},
                         "br-lab": {"ports": ["bond1"], "address": "dhcp", "stp": True}},
             "routes": [{"to": "10.20.0.0/16", "via": "192.0.2.254"},
                        {"to": "10.30.0.0/16", "via": "192.0.2.253"},
                        {"to": "10.40.0.0/16", "via": "198.51.100.1"}],
             "dns": ["192.0.2.53"], "search": ["example.com", "lab.example.com"]}},
        # DHCP holds the default route (named), a static address straight on a NIC.
        {"hostname": "kvm5.example.com",
         "network": {"nics": {"eno1": {"address": "dhcp"},
                              "eno2": {"address": "192.0.2.5/25"}},
                     "default_route": "eno1", "install": {"nic": "eno2",
                                                          "address": "192.0.2.5/25"}}},
        # No network at all: DHCP on the install NIC, and anaconda's file stays.
        {"hostname": "kvm6.example.com", "mac": "52:54:00:06:00:01"},
    ],
}


@pytest.fixture
def generated_site(tmp_path: Path) -> Site:
    folder = tmp_path / "site"
    for name, (content, mode) in OVERLAY_FILES.items():
        path = folder / "overlays" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    (folder / "overlays/.ksbuild-modes").write_text(MODES_FILE)
    (folder / "site.yaml").write_text(yaml.safe_dump(GENERATED, sort_keys=False))
    return load(folder / "site.yaml")


def test_generated_site_post_leaves_what_it_claims(tmp_path: Path,
                                                   generated_site: Site) -> None:
    kickstarts = render_site(generated_site)
    assert len(kickstarts) == 6
    for hostname, kickstart in kickstarts.items():
        host = generated_site.host(hostname)
        box = install(tmp_path / hostname, kickstart, host=host)
        assert check_host(box, host, expected_overlay(hostname)) == [], hostname


def test_generated_overlay_matches_the_overlay_module(generated_site: Site) -> None:
    """The hand-written expectation above and builder/overlay.py agree (so the example
    site, checked against the module, is checked against the same rules)."""
    for host in generated_site.hosts:
        assert overlay_of(generated_site, host) == expected_overlay(host.hostname)


def test_firewall_services_land_in_the_zone_file(tmp_path: Path,
                                                 generated_site: Site) -> None:
    host = generated_site.host("kvm1.example.com")
    box = install(tmp_path / "box", Renderer(generated_site).render_host(host))
    # The shipped zone's two services, then ours in order; ssh only once.
    assert zone_services(box.target, "public") == [
        "ssh", "dhcpv6-client", "http", "libvirt", "vnc-server"]


# --- scripts as text: bash -n and shellcheck -------------------------------------------------


def all_kickstarts(generated_site: Site) -> dict[str, str]:
    """The example (also as a PXE install, with the pxe_done step) and the generated site."""
    host, pxe = pxe_kickstart()
    return {**render_site(load(EXAMPLE)), f"{host.hostname} (pxe)": pxe,
            **render_site(generated_site)}


def shell_of(interpreter: str) -> str:
    return "bash" if interpreter.endswith("bash") else "sh"


def script_problems(folder: Path, kickstarts: dict[str, str]) -> list[str]:
    """`bash -n` (or `sh -n`) and shellcheck findings for every %post, by the shell its
    --interpreter names. Shellcheck runs with its defaults (style level and up): a warning
    we accept carries `# shellcheck disable=SCxxxx` and the reason in the template."""
    problems = []
    for hostname, kickstart in kickstarts.items():
        for number, script in enumerate(post_scripts(kickstart)):
            path = folder / f"{hostname}-{number}.sh"
            path.write_text(script.body)
            shell = shell_of(script.interpreter)
            syntax = run([shell, "-n", path], check=False)
            lint = run(["shellcheck", f"--shell={shell}", "--severity=style", path],
                       check=False)
            problems += [f"{path.name}: {shell} -n: {syntax.stderr.decode()}"] * bool(
                syntax.returncode)
            problems += [f"{path.name}: shellcheck: {lint.stdout.decode()}"] * bool(
                lint.returncode)
    return problems


def test_every_post_passes_bash_n_and_shellcheck(tmp_path: Path, generated_site: Site) -> None:
    kickstarts = all_kickstarts(generated_site)
    assert sum(len(post_scripts(text)) for text in kickstarts.values()) == 8
    assert script_problems(tmp_path, kickstarts) == []


@pytest.mark.parametrize(("template", "old", "new", "expected"), [
    ("post/selinux.sh.j2", '[ -f "$config" ]', '[ -f "$conifg" ]', "SC2154"),
    ("post/selinux.sh.j2", "\nfi\n", "\n", "bash -n"),
    # Without --interpreter anaconda runs /bin/sh, where pipefail is a bashism.
    ("host.ks.j2", "--interpreter=/bin/bash ", "", "pipefail"),
])
def test_shellcheck_and_bash_n_catch_broken_templates(tmp_path: Path, template: str, old: str,
                                                      new: str, expected: str) -> None:
    templates = broken_templates(tmp_path / "templates", template, old, new)
    site = load(EXAMPLE)
    kickstart = Renderer(site, templates=templates).render_host(site.hosts[0])
    problems = script_problems(tmp_path, {"broken": kickstart})
    assert any(expected in problem for problem in problems), problems


def test_the_stubs_pass_shellcheck() -> None:
    stubs = sorted(STUBS.iterdir())
    assert [s.name for s in stubs] == ["curl", "firewall-offline-cmd", "restorecon", "sleep",
                                       "systemctl"]
    lint = run(["shellcheck", "--severity=style", *stubs], check=False)
    assert lint.returncode == 0, lint.stdout.decode()


# --- idempotence -----------------------------------------------------------------------------


def test_running_every_post_twice_leaves_the_same_tree(tmp_path: Path,
                                                       generated_site: Site) -> None:
    """Everything but the scripts' own logs, which tell what each run did (the second run
    of `systemctl disable` has nothing left to remove, so it says less)."""
    for hostname, kickstart in all_kickstarts(generated_site).items():
        logs = [script.log for script in post_scripts(kickstart) if script.log]
        box = install(tmp_path / hostname, kickstart)
        once = snapshot(box.target, logs)
        again = box.install(kickstart)
        assert again.ok, again.report()
        twice = snapshot(box.target, logs)
        changed = sorted(set(once.items()) ^ set(twice.items()))
        assert changed == [], f"{hostname}: a second run changed {changed}"


# --- a failing step stops the install, loudly ------------------------------------------------


def stop_message(step: str) -> str:
    return f"ksbuild: %post step {step} failed"


def assert_stops_loudly(box: Sandbox, kickstart: str, step: str) -> str:
    """The install stops at `step` (--erroronfail), the log names it, and no later step
    ran. Returns the log."""
    result = box.install(kickstart)
    assert result.stopped_by is not None, f"the failure was swallowed:\n{result.report()}"
    log = result.stopped_by.log
    assert result.stopped_by.status != 0
    assert stop_message(step) in log, log
    assert "%post done" not in log
    return log


def break_hostname(target: Path) -> None:
    (target / "etc/hostname").unlink()
    (target / "etc/hostname").mkdir()


def break_network_scripts(target: Path) -> None:
    shutil.rmtree(target / "etc/sysconfig/network-scripts")
    (target / "etc/sysconfig/network-scripts").write_text("not a folder\n")


@pytest.mark.parametrize(("breakage", "step"), [(break_hostname, "hostname"),
                                                (break_network_scripts, "network")])
def test_a_failing_step_stops_the_install_loudly(tmp_path: Path, breakage: Callable[[Path], None],
                                                 step: str) -> None:
    site = load(EXAMPLE)
    kickstart = next(iter(render_site(site).values()))
    box = Sandbox(tmp_path / "box")
    breakage(box.target)
    log = assert_stops_loudly(box, kickstart, step)
    ran = re.findall(r"^ksbuild: %post step (\w+)$", log, re.MULTILINE)
    assert ran[-1] == step, ran  # the steps after it never started
    if step == "hostname":  # the first step: nothing else was touched
        assert (box.target / "etc/selinux/config").read_text() == FILES["etc/selinux/config"]


def test_an_unknown_firewalld_service_stops_the_install(tmp_path: Path) -> None:
    doc = {"defaults": {"root_password_hash": HASH},
           "hosts": [{"hostname": "fw.example.com",
                      "firewall": {"enabled": True, "services": ["ssh", "no-such-service"]}}]}
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(doc))
    kickstart = render_site(load(tmp_path / "site.yaml"))["fw.example.com"]
    log = assert_stops_loudly(Sandbox(tmp_path / "box"), kickstart, "firewall")
    assert "INVALID_SERVICE: 'no-such-service'" in log


def test_firewall_off_without_the_firewalld_package(tmp_path: Path) -> None:
    """`systemctl disable` fails when firewalld is not installed; the mask must still be
    made, and the install go on."""
    site = load(EXAMPLE)
    hostname, kickstart = next(iter(render_site(site).items()))
    box = Sandbox(tmp_path / "box")
    for path in ["usr/lib/systemd/system/firewalld.service",
                 "etc/systemd/system/multi-user.target.wants/firewalld.service",
                 "etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service"]:
        (box.target / path).unlink()
    box.seed_anaconda_network(kickstart)
    result = box.install(kickstart)
    assert result.ok, result.report()
    assert check_firewall(box, site.host(hostname)) == []


# --- the checks can fail: deliberately broken templates --------------------------------------

# (template, text in it, replacement, the host whose checks must fail, words of the problem)
MUTATIONS = [
    ("post/hostname.sh.j2", "> /etc/hostname", "> /etc/hostnme", "kvm1",
     "/etc/hostname holds"),
    ("post/selinux.sh.j2", "config=/etc/selinux/config", "config=/etc/selinux/conf", "kvm2",
     "SELINUX= lines"),
    ("post/selinux.sh.j2", "s/^SELINUX=.*/", "s/SELINUX=.*/", "kvm2", "other than SELINUX="),
    ("post/firewall.sh.j2", "systemctl mask firewalld.service",
     "systemctl disable firewalld.service", "kvm2", "is not a mask"),
    ("post/firewall.sh.j2", "systemctl enable firewalld.service",
     "systemctl start firewalld.service", "kvm1", "does nothing in the installer's chroot"),
    ("post/network.sh.j2", "cd /etc/sysconfig/network-scripts",
     "cd /etc/sysconfig/network-script", "kvm1", stop_message("network")),
    ("post/network.sh.j2", 'rm -f -- "$file"', ': -- "$file"', "kvm1", "unexpected file"),
    ("post/network.sh.j2", "cat > {{ ifcfg.filename }}", "cat >> {{ ifcfg.filename }}",
     "kvm4", "a second run changed the tree"),
    # anaconda's files for NICs picked by MAC: found by HWADDR, or by DEVICE through sysfs
    ("post/network.sh.j2", '[[ "$macs" == *" $mac "* ]]', "false", "kvm4",
     "ifcfg-enp2s0f0: unexpected file"),
    ("post/network.sh.j2", 'mac=$(cat "/sys/class/net/$device/address")', "mac=", "kvm4",
     "ifcfg-enp1s0f0: unexpected file"),
    ("post/sshkeys.sh.j2", 'chmod 0600 "$dir/authorized_keys"', ":", "kvm2",
     "authorized_keys is not a file with mode 0600"),
    ("post/sshkeys.sh.j2", 'restorecon -R "$dir"', 'echo "$dir"', "kvm2", "not relabelled"),
    ("post/sshkeys.sh.j2", "printf '%s\\n'", "printf '%s '", "kvm2", "expected the site's keys"),
    ("post/overlay.sh.j2", "chmod {{ '%04o' % file.mode }}", ": {{ '%04o' % file.mode }}",
     "kvm1", "expected 0600"),
    ("post/overlay.sh.j2", "chmod {{ '%04o' % dir.mode }}", ": {{ '%04o' % dir.mode }}",
     "kvm1", "expected 0750"),
    ("post/overlay.sh.j2", "rm -f {{ file.path | sh }}", ": {{ file.path | sh }}", "kvm1",
     "/usr/share/zoneinfo/UTC: changed"),
    ("post/overlay.sh.j2", "mkdir -p {{ dir.path | sh }}", "mkdir {{ dir.path | sh }}",
     "kvm1", "the second run failed"),
    ("post/repos.sh.j2", "(mirrorlist|mirror)\\.centos\\.org", "mirrors\\.centos\\.org",
     "kvm1", "CentOS-Base.repo still names mirrorlist.centos.org"),
    ("post/repos.sh.j2", "gpgcheck={{ 1 if repo.gpgcheck else 0 }}", "gpgcheck=0", "kvm1",
     "expected the site's repos"),
]


def broken_templates(folder: Path, template: str, old: str, new: str) -> Path:
    shutil.copytree(template_dir(), folder)
    path = folder / template
    text = path.read_text()
    assert old in text, f"{template} no longer holds {old!r}: update MUTATIONS"
    path.write_text(text.replace(old, new))
    return folder


def every_problem(folder: Path, site: Site, templates: Path,
                  hosts: tuple[Host, ...] | None = None) -> list[str]:
    """All the sandbox tests' findings for every host of `site` (or those given), as one
    list: the install, the checks, and a second run."""
    renderer = Renderer(site, templates=templates)
    problems = []
    for host in hosts or site.hosts:
        kickstart = renderer.render_host(host)
        box = Sandbox(folder / host.hostname)
        box.seed_anaconda_network(kickstart, machine_nics(host))
        result = box.install(kickstart)
        if not result.ok:
            problems.append(result.report())
            continue
        problems += check_host(box, host, expected_overlay(host.hostname))
        logs = [script.log for script in post_scripts(kickstart) if script.log]
        once = snapshot(box.target, logs)
        again = box.install(kickstart)
        if not again.ok:
            problems.append(f"{host.hostname}: the second run failed: {again.report()}")
        elif snapshot(box.target, logs) != once:
            problems.append(f"{host.hostname}: a second run changed the tree")
    return problems


def test_the_unbroken_templates_give_no_problem(tmp_path: Path, generated_site: Site) -> None:
    """The control for the mutations below: the same harness, the real templates."""
    assert every_problem(tmp_path, generated_site, template_dir()) == []


@pytest.mark.parametrize(("template", "old", "new", "short_name", "expected"), MUTATIONS,
                         ids=[f"{m[0].split('/')[-1]}:{m[2]}" for m in MUTATIONS])
def test_a_broken_template_is_caught(tmp_path: Path, generated_site: Site, template: str,
                                     old: str, new: str, short_name: str,
                                     expected: str) -> None:
    """Each mutation on the one host it must break (the whole site would take 3x longer
    to say the same)."""
    templates = broken_templates(tmp_path / "templates", template, old, new)
    host = generated_site.host(f"{short_name}.example.com")
    problems = every_problem(tmp_path / "boxes", generated_site, templates, (host,))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("line", ["set -euo pipefail\n", "--erroronfail "])
def test_without_errexit_or_erroronfail_a_failure_is_swallowed(tmp_path: Path,
                                                               line: str) -> None:
    """The loudness test above can fail: drop `set -e` or --erroronfail and it does."""
    site = load(EXAMPLE)
    templates = broken_templates(tmp_path / "templates", "host.ks.j2", line, "")
    kickstart = Renderer(site, templates=templates).render_host(site.hosts[0])
    box = Sandbox(tmp_path / "box")
    break_hostname(box.target)
    with pytest.raises(AssertionError):
        assert_stops_loudly(box, kickstart, "hostname")


# --- the PXE step ----------------------------------------------------------------------------

DONE_URL = "http://10.0.2.100:8080/ksbuild/done/52-54-00-12-34-56"
EVENTS_URL = "http://10.0.2.100:8080/events/kvm1.example.com"
FIRSTBOOT_UNIT = "etc/systemd/system/ksbuild-firstboot.service"
FIRSTBOOT_SCRIPT = "usr/local/sbin/ksbuild-firstboot"


def pxe_kickstart() -> tuple[Host, str]:
    site = load(EXAMPLE)
    host = site.hosts[0]
    return host, Renderer(site).render_host(host, {"pxe_done_url": DONE_URL,
                                                   "pxe_events_url": EVENTS_URL})


def curl_calls(box: Sandbox) -> list[list[str]]:
    return [call for call in box.calls() if call[0] == "curl"]


def test_pxe_done_tells_the_boot_server(tmp_path: Path) -> None:
    host, kickstart = pxe_kickstart()
    box = Sandbox(tmp_path / "box")
    (box.target / ".sandbox/curl-exit").write_text("0\n")
    box.seed_anaconda_network(kickstart)
    result = box.install(kickstart)
    assert result.ok, result.report()
    assert f"ksbuild: told the boot server: {DONE_URL}" in result.runs[0].log
    [call] = curl_calls(box)
    assert call[-1] == DONE_URL and "POST" in call
    assert check_host(box, host, overlay_of(load(EXAMPLE), host)) == []


def test_pxe_done_with_the_server_down_warns_and_finishes(tmp_path: Path) -> None:
    """A finished install must not fail because the boot server is away: a few tries,
    then a warning (the host will PXE-install again unless switched by hand)."""
    _, kickstart = pxe_kickstart()
    box = Sandbox(tmp_path / "box")  # curl fails to connect: the sandbox has no network
    result = box.install(kickstart)
    assert result.ok, result.report()
    assert len(curl_calls(box)) == 5
    assert f"could not reach {DONE_URL}" in result.runs[0].log
    assert "ksbuild: %post done" in result.runs[0].log


def test_no_pxe_done_step_without_pxe(tmp_path: Path) -> None:
    box = install(tmp_path / "box", next(iter(render_site(load(EXAMPLE)).values())))
    assert curl_calls(box) == []
    assert not (box.target / FIRSTBOOT_UNIT).exists()


def test_pxe_install_enables_the_first_boot_unit(tmp_path: Path) -> None:
    host, kickstart = pxe_kickstart()
    box = install(tmp_path / "box", kickstart)
    unit = (box.target / FIRSTBOOT_UNIT).read_text()
    assert "ExecStart=/usr/local/sbin/ksbuild-firstboot\n" in unit
    assert "After=network-online.target\n" in unit and "Type=oneshot\n" in unit
    wanted = box.target / "etc/systemd/system/multi-user.target.wants/ksbuild-firstboot.service"
    assert wanted.is_symlink() and str(wanted.readlink()) == "/" + FIRSTBOOT_UNIT
    assert box.run(["systemctl", "is-enabled", "ksbuild-firstboot.service"]) == (0, "enabled\n")
    script = box.target / FIRSTBOOT_SCRIPT
    assert script.stat().st_mode & 0o777 == 0o755
    text = script.read_text()
    assert f"url={EVENTS_URL}\n" in text and text.startswith("#!/bin/bash\n")
    bridge = host.bridges[0]
    assert f"expected='{bridge.name} {bridge.address} {','.join(bridge.slaves)}'\n" in text
    assert check_host(box, host, overlay_of(load(EXAMPLE), host)) == []


def test_pre_onerror_and_first_boot_scripts_pass_shellcheck(tmp_path: Path) -> None:
    """The scripts a PXE install adds besides its %post: %pre, %onerror (as pykickstart's
    RHEL7 grammar reads them) and the first-boot script the %post writes."""
    _, kickstart = pxe_kickstart()
    handler = makeVersion(RHEL7)
    KickstartParser(handler, followIncludes=False).readKickstartFromString(kickstart)
    extra = {script.type: script.script for script in handler.scripts
             if script.type in (KS_SCRIPT_PRE, KS_SCRIPT_ONERROR)}
    assert set(extra) == {KS_SCRIPT_PRE, KS_SCRIPT_ONERROR}
    assert f"{EVENTS_URL}/started" in extra[KS_SCRIPT_PRE]
    assert f"{EVENTS_URL}/failed" in extra[KS_SCRIPT_ONERROR]
    box = install(tmp_path / "box", kickstart)
    scripts = {"pre": extra[KS_SCRIPT_PRE], "onerror": extra[KS_SCRIPT_ONERROR],
               "firstboot": (box.target / FIRSTBOOT_SCRIPT).read_text()}
    problems = []
    for name, body in scripts.items():
        path = tmp_path / f"{name}.sh"
        path.write_text(body)
        for argv in (["bash", "-n", path],
                     ["shellcheck", "--shell=bash", "--severity=style", path]):
            done = run(argv, check=False)
            if done.returncode:
                problems.append(f"{name}: {argv[0]}: {(done.stdout + done.stderr).decode()}")
    assert problems == []


def test_a_failing_post_step_reports_failed(tmp_path: Path) -> None:
    """Anaconda runs no %onerror for a failing %post --erroronfail: its ERR trap reports."""
    _, kickstart = pxe_kickstart()
    broken = kickstart.replace("step=network\n", "step=network\nfalse\n", 1)
    assert broken != kickstart
    box = Sandbox(tmp_path / "box")
    box.seed_anaconda_network(broken)
    result = box.install(broken)
    assert result.stopped_by is not None
    # One curl call; its log= argument holds the log's lines, so read the call log whole.
    calls = (box.target / ".sandbox/calls").read_text()
    assert calls.count("curl\t") == 1
    assert "\tmessage=%post step network failed (status 1)\t" in calls
    assert calls.endswith(f"\t{EVENTS_URL}/failed\n")
    assert "log=ksbuild: %post step hostname\n" in calls  # the tail of the %post's log


# --- the sandbox itself ----------------------------------------------------------------------

SANDBOX_KICKSTART = """\
%post --nochroot --interpreter=/bin/bash
set -e
[ -d /mnt/sysimage/etc/sysconfig/network-scripts ]
echo "from the installer" > /mnt/sysimage/etc/from-nochroot
%end
%post
echo "not fatal" >&2
exit 3
%end
%post --log=/var/log/third.log
cat /etc/from-nochroot
echo "$0 $PWD $PATH" > /etc/third
%end
%post --erroronfail
exit 4
%end
%post
touch /etc/never
%end
"""


def test_sandbox_runs_posts_as_anaconda_does(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box")
    result = box.install(SANDBOX_KICKSTART)
    assert [run.status for run in result.runs] == [0, 3, 0, 4]  # the fifth never ran
    assert result.stopped_by is result.runs[3]
    assert result.runs[1].log == "not fatal\n"  # stderr is in the log too
    assert (box.target / "var/log/third.log").read_text() == "from the installer\n"
    script, cwd, path = (box.target / "etc/third").read_text().split()
    assert re.fullmatch(r"/tmp/ks-script-\w+", script) and cwd == "/"
    assert path == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert not (box.target / "etc/never").exists()
    left = [path.name for path in (box.target / "tmp").iterdir()]
    assert left and all(name.endswith(".log") for name in left), left  # scripts removed


@pytest.mark.parametrize("mode", [m for m in MODES if m != "chroot"])
def test_sandbox_has_no_network(tmp_path: Path, mode: str) -> None:
    """A loopback server on this machine is out of reach from inside (bash's /dev/tcp
    needs no tool). The bare chroot mode is only used where namespaces are refused."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        box = Sandbox(tmp_path / "box", mode)
        status, output = box.run(["/bin/bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"])
    assert status != 0, "the sandbox reached a server on this machine"
    assert "unreachable" in output.lower(), output


def test_sandbox_can_see_the_network_without_namespaces(tmp_path: Path) -> None:
    """The control for the test above: the same probe does connect from a bare chroot."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        box = Sandbox(tmp_path / "box", "chroot")
        status, output = box.run(["/bin/bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"])
    assert status == 0, output


STUB_SCRIPT = """\
%post --interpreter=/bin/bash --erroronfail
set -euo pipefail
check() { [ "$(systemctl is-enabled firewalld || true)" = "$1" ] || { echo "want $1"; exit 1; }; }
check enabled
systemctl disable firewalld
check disabled
[ ! -e /etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service ]
systemctl mask firewalld.service
check masked
if systemctl enable firewalld.service; then echo "enable of a masked unit worked"; exit 1; fi
systemctl unmask firewalld.service
systemctl enable firewalld.service
check enabled
if systemctl disable no-such.service; then echo "disable of no unit worked"; exit 1; fi
firewall-offline-cmd --add-service=http
firewall-offline-cmd --add-service=http
[ "$(firewall-offline-cmd --list-services)" = "ssh dhcpv6-client http " ]
firewall-offline-cmd --remove-service=ssh
if firewall-offline-cmd --add-service=nope; then exit 1; fi
if systemctl frobnicate x; then exit 1; fi
echo stubs ok
%end
"""


def test_stubs_behave_like_systemd_219_and_firewalld_0_6(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box")
    result = box.install(STUB_SCRIPT)
    assert result.ok and "stubs ok" in result.runs[0].log, result.report()
    assert "Error: INVALID_SERVICE: 'nope'" in result.runs[0].log
    assert "verb 'frobnicate' is not emulated" in result.runs[0].log
    assert zone_services(box.target, "public") == ["dhcpv6-client", "http"]
    links = box.target / "etc/systemd/system"
    assert (links / "multi-user.target.wants/firewalld.service").readlink() == Path(
        "/usr/lib/systemd/system/firewalld.service")
    assert ["systemctl", "mask", "firewalld.service"] in box.calls()
