"""Rendered kickstarts: what they say, that pykickstart accepts them, that nothing injects."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL7, makeVersion

from builder import kickstart, site
from builder.errors import KsbuildError
from tests.conftest import REPO
from tests.sitefiles import site_doc, write_site


def render(tmp_path: Path, doc: dict[str, object] | None = None) -> dict[str, str]:
    return kickstart.render_site(site.load(write_site(tmp_path, doc or site_doc())))


def fresh_parse(text: str) -> object:
    handler = makeVersion(RHEL7)
    KickstartParser(handler).readKickstartFromString(text)
    return handler


def ifcfg(text: str, device: str) -> dict[str, str]:
    block = re.search(rf"cat > ifcfg-{device} <<'KSBUILD_EOF'\n(.*?)KSBUILD_EOF", text, re.S)
    assert block, device
    return dict(line.split("=", 1) for line in block.group(1).splitlines())


def test_example_kickstart_content() -> None:
    (text,) = kickstart.render_site(site.load(REPO / "kickstarts" / "site.yaml")).values()
    for line in ["install", "url --url=https://vault.centos.org/7.9.2009/os/x86_64/",
                 "lang en_US.UTF-8", "keyboard --vckeymap=us", "timezone Asia/Shanghai --isUtc",
                 "selinux --disabled", "firewall --disabled", "autopart --type=lvm",
                 "bootloader --location=mbr", "poweroff --eject",
                 "network --hostname=cdh-host.c7.jevoncode.com",
                 "@^virtualization-host-environment"]:
        assert line in text.splitlines(), line
    assert ("network --device=br0 --bridgeslaves=eth0 --bootproto=static --ip=192.168.1.108 "
            "--netmask=255.255.0.0 --gateway=192.168.1.1 --nameserver=192.168.1.1 "
            "--bridgeopts=stp=no --onboot=yes --activate") in text
    assert re.search(r"^rootpw --iscrypted \$6\$", text, re.M)
    slave, bridge = ifcfg(text, "eth0"), ifcfg(text, "br0")
    assert slave["BRIDGE"] == "br0" and "IPADDR" not in slave and slave["BOOTPROTO"] == "none"
    assert bridge["TYPE"] == "Bridge" and bridge["BOOTPROTO"] == "static"
    assert (bridge["IPADDR"], bridge["PREFIX"], bridge["GATEWAY"], bridge["DNS1"],
            bridge["ONBOOT"]) == ("192.168.1.108", "16", "192.168.1.1", "192.168.1.1", "yes")
    assert slave["UUID"] != bridge["UUID"]
    assert "systemctl mask firewalld.service" in text
    assert "printf '%s\\n' cdh-host.c7.jevoncode.com > /etc/hostname" in text


def test_every_kickstart_passes_ksvalidator(tmp_path: Path) -> None:
    out = tmp_path / "ks"
    loaded = site.load(write_site(tmp_path, site_doc()))
    paths = kickstart.write_kickstarts(loaded, out)
    example = kickstart.write_kickstarts(site.load(REPO / "kickstarts" / "site.yaml"),
                                         tmp_path / "example")
    ksvalidator = Path(sys.executable).parent / "ksvalidator"
    for path in paths + example:
        result = subprocess.run([str(ksvalidator), "-e", "-v", "RHEL7", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_ifcfg_uuids_unique_and_stable(tmp_path: Path) -> None:
    first = render(tmp_path)
    again = render(tmp_path)
    assert first == again
    uuids = [line for text in first.values() for line in text.splitlines()
             if line.startswith("UUID=")]
    assert len(uuids) == 2 + 5 and len(set(uuids)) == len(uuids)


def test_second_host_bridges_and_firewall(tmp_path: Path) -> None:
    text = render(tmp_path)["kvm2.example.com"]
    assert "--device=br0 --bridgeslaves=eno1,eno2" in text
    assert "--device=br1 --bridgeslaves=eno3 --bootproto=static --ip=10.2.0.12" in text
    assert "--bridgeopts=stp=yes,forward-delay=15" in text
    stp_bridge = next(name for name in ("br0", "br1") if ifcfg(text, name)["STP"] == "yes")
    assert ifcfg(text, stp_bridge)["DELAY"] == "15"  # NM 1.18 refuses STP=yes with DELAY=0
    assert "firewall --enabled --service=ssh --service=libvirt" in text
    assert "selinux --enforcing" in text
    assert ifcfg(text, "eno2")["BRIDGE"] == "br0" and ifcfg(text, "eno3")["BRIDGE"] == "br1"
    assert "GATEWAY" not in ifcfg(text, "br1") and ifcfg(text, "br0")["DNS2"] == "10.1.0.3"
    assert "firewall-offline-cmd --add-service=libvirt" in text


def test_explicit_storage_and_kernel_args(tmp_path: Path) -> None:
    doc = site_doc()
    doc["defaults"]["storage"] = {
        "drives": ["vda"], "partitions": [
            {"mount": "/boot", "size": 1024}, {"mount": "swap", "size": 4096},
            {"mount": "/", "size": 10240, "grow": True, "fstype": "ext4"}]}
    doc["defaults"]["kernel_args"] = ["console=ttyS0,115200", "nomodeset"]
    doc["defaults"]["ntp"] = ["0.centos.pool.ntp.org"]
    text = render(tmp_path, doc)["kvm2.example.com"]
    assert "ignoredisk --only-use=vda" in text
    assert "clearpart --all --initlabel --drives=vda" in text
    assert "part / --size=10240 --grow --fstype=ext4 --ondisk=vda" in text
    assert "part swap --size=4096 --ondisk=vda" in text and "autopart" not in text
    assert 'bootloader --location=mbr --boot-drive=vda --append="console=ttyS0,115200 nomodeset"' \
        in text
    assert "--ntpservers=0.centos.pool.ntp.org" in text


def test_root_password_from_environment_is_hashed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KSBUILD_TEST_PW", "plain-Secret-42")
    doc = site_doc()
    del doc["defaults"]["root_password_hash"]
    doc["defaults"]["root_password_env"] = "KSBUILD_TEST_PW"
    rendered = render(tmp_path, doc)
    for text in rendered.values():
        assert "plain-Secret-42" not in text
        hashed = re.search(r"^rootpw --iscrypted (\S+)$", text, re.M)
        assert hashed and hashed.group(1).startswith("$6$")
        assert sha512_crypt.verify("plain-Secret-42", hashed.group(1))
    assert render(tmp_path, doc) == rendered  # same salt every build: reproducible


def test_equal_passwords_hash_differently_in_other_sites(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The salt came from the password alone: equal passwords gave equal hashes in every site
    in the world. Now the site's salt_seed (else its first host's name) goes into it too."""
    monkeypatch.setenv("KSBUILD_TEST_PW", "plain-Secret-42")

    def hashes(folder: str, **changes: object) -> set[str]:
        doc = site_doc(**changes)
        del doc["defaults"]["root_password_hash"]
        doc["defaults"]["root_password_env"] = "KSBUILD_TEST_PW"
        (tmp_path / folder).mkdir(exist_ok=True)
        texts = render(tmp_path / folder, doc).values()
        found = {re.search(r"^rootpw --iscrypted (\S+)$", t, re.M).group(1)  # type: ignore
                 for t in texts}
        assert all(sha512_crypt.verify("plain-Secret-42", h) for h in found)
        return found

    first = hashes("a")
    assert len(first) == 1  # one site: one hash for its shared password (built once)
    assert hashes("b") == first  # reproducible
    assert hashes("c", salt_seed="lab-7f3c") != first
    assert hashes("d", salt_seed="lab-7f3c") == hashes("c", salt_seed="lab-7f3c")
    other = site_doc()
    other["hosts"].reverse()  # another first host: another site as far as the salt goes
    assert hashes("e", hosts=other["hosts"]) != first
    assert "'a b' is not a seed" in str(pytest.raises(site.InputError, render, tmp_path / "a",
                                                      site_doc(salt_seed="a b")).value)


def test_hash_password_salts_at_random() -> None:
    from builder import secrets

    assert secrets.sha512_crypt_random("x") != secrets.sha512_crypt_random("x")


def test_reused_validator_matches_a_fresh_handler(tmp_path: Path) -> None:
    """The validator restores pykickstart's command state between kickstarts; a kickstart
    parsed after others must give exactly what a brand-new handler gives."""
    rendered = list(render(tmp_path).values())
    validator = kickstart.Validator()
    for text in rendered + rendered[::-1]:
        validator.validate(text, "x")
        assert str(validator.handler) == str(fresh_parse(text))


def test_validator_refuses_what_rhel7_refuses() -> None:
    validator = kickstart.Validator()
    with pytest.raises(KsbuildError, match=r"x\.cfg: pykickstart \(RHEL7\) rejects it"):
        validator.validate("install\nnetwork --device=br0 --bogus\n", "x.cfg")
    with pytest.raises(KsbuildError, match="rejects it"):  # a warning counts as an error
        validator.validate("network --device=br0\nnetwork --device=br0\n", "x.cfg")
    validator.validate("install\nnetwork --device=br0\n", "x.cfg")  # state reset after errors


def test_hostile_strings_never_reach_the_output(tmp_path: Path) -> None:
    """Each hostile value is refused by the loader; none is ever rendered."""
    hostile = ["x;reboot", "$(reboot)", "`reboot`", "a\nb", "a'b", 'a"b', "a b", "a\\b"]
    fields = [("hostname",), ("timezone",), ("lang",), ("keyboard",),
              ("bridge", "name"), ("bridge", "gateway"), ("packages", "extra")]
    for value in hostile:
        for field in fields:
            doc = site_doc()
            target = doc["hosts"][0]
            for key in field[:-1]:
                target = target.setdefault(key, {})
            target[field[-1]] = [value] if field[-1] == "extra" else value
            if field == ("packages", "extra"):
                target["environment"] = "virtualization-host-environment"
            with pytest.raises(site.InputError):
                site.load(write_site(tmp_path, doc))


def test_overlay_files_with_modes_are_carried_in_the_kickstart(tmp_path: Path) -> None:
    overlays = tmp_path / "overlays"
    (overlays / "common" / "etc" / "motd.d").mkdir(parents=True)
    (overlays / "common" / "etc" / "motd.d" / "kvm").write_text("KVM host\n")
    (overlays / "common" / "usr" / "local" / "bin").mkdir(parents=True)
    tool = overlays / "common" / "usr" / "local" / "bin" / "vm-list"
    tool.write_text("#!/bin/sh\nvirsh list --all\n")
    tool.chmod(0o755)
    own = overlays / "hosts" / "kvm2.example.com" / "root" / ".ssh"
    own.mkdir(parents=True)
    (own / "authorized_keys").write_text("ssh-ed25519 AAAA test\n")
    (overlays / ".ksbuild-modes").write_text("root/.ssh 0700\nroot/.ssh/authorized_keys 0600\n")
    rendered = render(tmp_path, site_doc(overlays="overlays"))
    first, second = rendered["cdh-host.c7.jevoncode.com"], rendered["kvm2.example.com"]
    assert "base64 -d > /etc/motd.d/kvm" in first and "chmod 0644 /etc/motd.d/kvm" in first
    assert "chmod 0755 /usr/local/bin/vm-list" in first
    assert "/root/.ssh/authorized_keys <<" not in first
    assert "chmod 0700 /root/.ssh\n" in second and "chmod 0600 /root/.ssh/authorized_keys" in second


def test_overlay_path_with_shell_characters_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "overlays" / "common" / "etc" / "$(reboot)"
    bad.parent.mkdir(parents=True)
    bad.write_text("x")
    with pytest.raises(site.InputError, match=r"overlay path 'etc/\$\(reboot\)'"):
        render(tmp_path, site_doc(overlays="overlays"))


@pytest.mark.parametrize("link", ["hosts/kvm2.example.com", "hosts", "common", "common/etc",
                                  "common/etc/motd", ".ksbuild-modes"])
def test_overlay_symlinks_are_refused_at_every_level(tmp_path: Path, link: str) -> None:
    """A symlinked hosts/<name> (or any level) would embed files from outside the tree: a
    private key, at mode 0644."""
    outside = tmp_path / "outside"
    (outside / "root" / ".ssh").mkdir(parents=True)
    (outside / "root" / ".ssh" / "id_rsa").write_text("PRIVATE KEY\n")
    (outside / "etc").mkdir()
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    target = overlays / link
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(outside / "root/.ssh/id_rsa" if link in ("common/etc/motd", ".ksbuild-modes")
                      else outside)
    with pytest.raises(site.InputError, match=f"{re.escape(str(target))}: symbolic links are not"):
        render(tmp_path, site_doc(overlays="overlays"))


def test_overlay_modes_file_not_utf8_is_one_line(tmp_path: Path) -> None:
    overlays = tmp_path / "overlays"
    (overlays / "common").mkdir(parents=True)
    (overlays / ".ksbuild-modes").write_bytes(b"root/.ssh 0700\n# caf\xe9\n")
    with pytest.raises(site.InputError, match=r"\.ksbuild-modes:2: not UTF-8 text$"):
        render(tmp_path, site_doc(overlays="overlays"))


def test_templates_are_strict(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "kickstarts", templates)
    main = templates / "host.ks.j2"
    main.write_text(main.read_text().replace("{{ host.lang }}", "{{ host.language }}"))
    loaded = site.load(write_site(tmp_path, site_doc()))
    with pytest.raises(KsbuildError, match="rendering the kickstart of .*language"):
        kickstart.Renderer(loaded, templates=templates).render_host(loaded.hosts[0])


def test_compiled_templates_change_no_text(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Templates kept compiled (`ksbuild build` keeps them in OUT/.ksbuild) render what
    templates compiled now do: when written, when read, after a template changed, and from
    damaged files; another ksbuild's files and killed writes' are removed."""
    templates = tmp_path / "templates"
    shutil.copytree(REPO / "kickstarts", templates)
    monkeypatch.setenv("KSBUILD_TEMPLATES", str(templates))
    loaded = site.load(write_site(tmp_path, site_doc()))
    variants = {"ks": kickstart.Variant(loaded.hosts)}
    compiled = tmp_path / "compiled"
    own = kickstart.CompiledTemplates.folder(compiled)

    def texts(folder: Path | None = compiled) -> dict[str, dict[str, str]]:
        return kickstart.render_variants(loaded, variants, compiled=folder)

    expected = texts(None)
    assert texts() == expected
    assert len(list(own.iterdir())) == len(kickstart.POST_SCRIPTS) + 1
    assert texts() == expected
    main = templates / "host.ks.j2"
    main.write_text(main.read_text() + "# edited\n")
    edited = texts()
    assert edited == texts(None) != expected
    for file in own.iterdir():
        file.write_bytes(file.read_bytes()[:40])
    (own / "x.jinja.tmp").write_bytes(b"what a killed write left")
    (compiled / "0123456789abcdef").mkdir()  # another ksbuild's
    assert texts() == edited
    assert list(compiled.iterdir()) == [own]
    assert len(list(own.iterdir())) == len(kickstart.POST_SCRIPTS) + 1


def test_large_fleet_uses_workers_and_matches_one_process(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from bench.fleet import write_fleet_site

    loaded = site.load(write_fleet_site(tmp_path / "fleet.yaml", kickstart.PARALLEL_MIN_HOSTS))
    alone = kickstart.render_site(loaded, jobs=1)
    assert kickstart.render_site(loaded, jobs=2) == alone
    prepared = kickstart.Renderer(loaded).prepare(len(loaded.hosts))
    variants = {"ks": kickstart.Variant(loaded.hosts)}
    for jobs in (2, 1):  # a renderer made already: copied into each worker, then used itself
        assert kickstart.render_variants(loaded, variants, jobs, renderer=prepared)["ks"] == alone


def test_a_hosts_variants_render_together_as_each_alone(tmp_path: Path) -> None:
    """render_variants renders a host's variants one after the other in one validator that
    remembers for the next: the same texts, in the same order, as each rendered alone, in
    one process and in workers; a host in one variant only is rendered once."""
    sys.path.insert(0, str(REPO))
    from bench.fleet import write_fleet_site

    loaded = site.load(write_fleet_site(tmp_path / "fleet.yaml", 150))

    def extra(host: site.Host) -> dict[str, str]:
        return {"pxe_done_url": f"http://127.0.0.1/done/{host.hostname}",
                "pxe_events_url": f"http://127.0.0.1/events/{host.hostname}"}

    def tree(host: site.Host) -> site.Host:  # as pxe.install_tree makes a PXE kickstart's
        return replace(host, source="http://127.0.0.1/tree/")

    variants = {"ks": kickstart.Variant(loaded.hosts[::-1]),
                "pxe": kickstart.Variant(loaded.hosts[::2], extra),
                "tree": kickstart.Variant(loaded.hosts[::7], extra, tree)}
    one = kickstart.Renderer(loaded)  # each kickstart validated outside together()
    alone = {name: {host.hostname: variant.render(one, host)
                    for host in sorted(variant.hosts, key=lambda h: h.hostname)}
             for name, variant in variants.items()}
    for jobs in (1, 2):  # 247 kickstarts: workers from PARALLEL_MIN_HOSTS (200) on
        rendered = kickstart.render_variants(loaded, variants, jobs=jobs)
        assert [list(texts.items()) for texts in rendered.values()] == \
            [list(texts.items()) for texts in alone.values()]


def test_an_install_tree_variant_makes_only_the_source_values_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pxe.install_tree: local, a host's PXE kickstart is rendered for the host with
    another install source: inside together() the context is made once a host, only its
    source values again (the host, its repos: `baseurl: source` follows the source), and
    the texts are the ones each renders alone."""
    doc = site_doc()
    doc["defaults"]["repos"] = [{"name": "local", "baseurl": "source"},
                                {"name": "epel", "baseurl": "https://example.org/epel/7/"}]
    loaded = site.load(write_site(tmp_path, doc))

    def tree(host: site.Host) -> site.Host:  # as builder/pxe/tree.py makes a PXE kickstart's
        return replace(host, source="http://127.0.0.1/tree/")

    variants = {"ks": kickstart.Variant(loaded.hosts), "tree": kickstart.Variant(
        loaded.hosts, lambda host: {"pxe_done_url": f"http://127.0.0.1/done/{host.hostname}"},
        tree)}
    one = kickstart.Renderer(loaded)
    alone = {name: {host.hostname: variant.render(one, host) for host in loaded.hosts}
             for name, variant in variants.items()}
    assert all("baseurl=http://127.0.0.1/tree/\n" in text for text in alone["tree"].values())
    assert not any("127.0.0.1/tree" in text for text in alone["ks"].values())
    made = []
    context = kickstart.Renderer.context
    monkeypatch.setattr(kickstart.Renderer, "context",
                        lambda self, host: made.append(host.hostname) or context(self, host))
    assert kickstart.render_variants(loaded, variants, jobs=1) == alone
    assert made == [host.hostname for host in loaded.hosts]


def test_a_post_step_reads_only_the_values_template_reads_names(tmp_path: Path) -> None:
    """Renderer.together reuses a %post step's text while the values template_reads names
    are the same objects: a step must read nothing else. Each step renders the same from
    those values alone (and the globals), on hosts with keys, overlays, firewall, repos."""
    overlay = tmp_path / "overlays" / "common" / "etc" / "motd"
    overlay.parent.mkdir(parents=True)
    overlay.write_text("KVM host\n")
    doc = site_doc(overlays="overlays")
    doc["defaults"].update(
        root_ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsb admin@example.com"],
        firewall={"enabled": True, "services": ["ssh"]}, selinux="enforcing",
        repos=[{"name": "epel", "baseurl": "https://example.org/epel/7/$basearch/"}])
    loaded = site.load(write_site(tmp_path, doc))
    renderer = kickstart.Renderer(loaded)
    reads = renderer._post_reads
    assert reads["hostname"] == ("host",) and reads["network"] == ("ifcfgs", "leftovers")
    assert reads["firstboot"] is None  # it includes a template: it may read anything
    for host in loaded.hosts:
        values = {**renderer.env.globals, **renderer.context(host),
                  "pxe_done_url": "http://127.0.0.1/done", "pxe_events_url": "http://x/e"}
        for name, names in reads.items():
            template = renderer._posts[name]
            if names is not None:
                alone = {**renderer.env.globals, **{key: values[key] for key in names}}
                assert kickstart.render_shared(template, alone) == template.render(values), name


def test_template_reads_none_where_a_template_may_read_anything(tmp_path: Path) -> None:
    env = kickstart.template_environment(tmp_path)
    for source in ('{% include "x" %}', '{% extends "x" %}', '{% import "x" as y %}',
                   '{% from "x" import y %}', "{% block b %}{{ a }}{% endblock %}"):
        (tmp_path / "t.j2").write_text(source)
        assert kickstart.template_reads(env, "t.j2") is None, source
    (tmp_path / "t.j2").write_text("{% set b = 1 %}{% for c in d %}{{ a ~ b ~ c }}{% endfor %}")
    assert kickstart.template_reads(env, "t.j2") == ("a", "d")
    assert kickstart.template_reads(env, "missing.j2") is None


@pytest.mark.parametrize("path", ["etc/hostname", "etc/selinux/config",
                                  "etc/sysconfig/network-scripts/ifcfg-br0"])
def test_overlay_cannot_override_what_the_site_sets(tmp_path: Path, path: str) -> None:
    target = tmp_path / "overlays" / "common" / path
    target.parent.mkdir(parents=True)
    target.write_text("x\n")
    with pytest.raises(site.InputError, match=f"overlay file /{path} of .* would override"):
        render(tmp_path, site_doc(overlays="overlays"))


def test_root_ssh_keys_pass_validation_and_go_in_by_post(tmp_path: Path) -> None:
    """Issue 10 item 3: the RHEL7 handler of pykickstart 3.x has no `sshkey` (1.99.66.22's
    has), so a kickstart with the command never validated; the keys go in from %post."""
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsb admin@example.com"
    doc = site_doc()
    doc["defaults"]["root_ssh_keys"] = [key]
    for text in render(tmp_path, doc).values():
        assert not re.search(r"^sshkey", text, re.M)
        assert f"printf '%s\\n' '{key}' >> \"$dir/authorized_keys\"" in text
    with pytest.raises(KsbuildError, match="Unknown command: sshkey"):
        kickstart.Validator().validate(f'sshkey --username=root "{key}"\n', "x.cfg")
    overlay = tmp_path / "overlays" / "common" / "root" / ".ssh" / "authorized_keys"
    overlay.parent.mkdir(parents=True)
    overlay.write_text(key + "\n")
    with pytest.raises(site.InputError, match="overlay file /root/.ssh/authorized_keys"):
        render(tmp_path, site_doc(overlays="overlays", defaults=doc["defaults"]))


def test_iso_kickstarts_power_off_unless_the_site_asks_to_reboot(tmp_path: Path) -> None:
    """Issue 10 item 5: a machine booting the ISO from a USB stick or virtual media (which
    `reboot --eject` does not eject) would reinstall itself after every reboot."""
    doc = site_doc()
    first, second = render(tmp_path, doc).values()
    for text in (first, second):
        assert "\npoweroff --eject\n" in text and not re.search(r"^reboot", text, re.M)
    doc["hosts"][1]["after_install"] = "reboot"
    first, second = render(tmp_path, doc).values()
    assert "\npoweroff --eject\n" in first and "\nreboot --eject\n" in second
