"""`ksbuild build` and `verify`: reproducible bytes, a manifest that proves it, no needless
work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder import build
from tests.conftest import REPO
from tests.sitefiles import site_doc, write_site


def ksbuild(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=cwd, env=full_env,
                          text=True, capture_output=True, timeout=600,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and ".ksbuild" not in p.parts}


def make_site(tmp_path: Path) -> Path:
    overlays = tmp_path / "overlays" / "common" / "etc"
    overlays.mkdir(parents=True)
    (overlays / "motd").write_text("managed by ksbuild\n")
    return write_site(tmp_path, site_doc(overlays="overlays"))


def test_two_builds_in_different_places_and_environments_are_identical(tmp_path: Path) -> None:
    site_path = make_site(tmp_path)
    first, second = tmp_path / "a" / "out", tmp_path / "b" / "deeper" / "out"
    one = ksbuild("build", str(site_path), "-o", str(first), cwd=tmp_path,
                  env={"TZ": "UTC", "LANG": "C", "PYTHONHASHSEED": "1",
                       "SOURCE_DATE_EPOCH": "1700000000"}, umask=0o022)
    two = ksbuild("build", str(site_path), "-o", str(second), cwd=REPO,
                  env={"TZ": "Asia/Shanghai", "LANG": "de_DE.UTF-8", "PYTHONHASHSEED": "4242",
                       "SOURCE_DATE_EPOCH": "1700000000"}, umask=0o077)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = tree_bytes(first), tree_bytes(second)
    assert sorted(a) == sorted(b) and a == b
    assert "manifest.json" in a and len(a) >= 3
    modes = {(p.relative_to(first).as_posix(), p.stat().st_mode & 0o777)
             for p in first.rglob("*") if p.is_file() and ".ksbuild" not in p.parts}
    assert modes == {(p.relative_to(second).as_posix(), p.stat().st_mode & 0o777)
                     for p in second.rglob("*") if p.is_file() and ".ksbuild" not in p.parts}


def test_manifest_lists_inputs_and_outputs_with_hashes(tmp_path: Path) -> None:
    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    result = ksbuild("build", str(site_path), "-o", str(out), "--json",
                     env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    document = json.loads((out / "manifest.json").read_text())
    assert summary["outputs"] == document["outputs"]
    assert document["source_date_epoch"] == 1700000000
    kinds = {(e["kind"], e["path"]) for e in document["inputs"]}
    assert ("site", "site.yaml") in kinds and ("overlay", "common/etc/motd") in kinds
    assert ("template", "host.ks.j2") in kinds and ("template", "post/network.sh.j2") in kinds
    import hashlib

    for item in document["outputs"]:
        data = (out / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"] and len(data) == item["size"]
    assert {e["path"] for e in document["outputs"]} >= {
        "ks/cdh-host.c7.jevoncode.com.cfg", "ks/kvm2.example.com.cfg"}
    assert str(tmp_path) not in (out / "manifest.json").read_text()


def test_no_op_rebuild_does_nothing_and_one_host_change_rewrites_one_file(
        tmp_path: Path) -> None:
    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    first = build.build(options)
    assert not first.up_to_date and "ks/kvm2.example.com.cfg" in first.written
    lines: list[str] = []
    again = build.build(build.Options(site=site_path, out=out, source_date_epoch=1700000000,
                                      report=lines.append))
    assert again.up_to_date and again.written == []
    assert lines == ["nothing changed since the last build: nothing to do"]

    other = out / "ks" / "cdh-host.c7.jevoncode.com.cfg"
    before = other.stat().st_mtime_ns, other.stat().st_ino
    doc = site_doc(overlays="overlays")
    doc["hosts"][1]["timezone"] = "Europe/Berlin"
    write_site(tmp_path, doc)
    changed = build.build(options)
    assert changed.written == ["ks/kvm2.example.com.cfg", "manifest.json"]
    assert (other.stat().st_mtime_ns, other.stat().st_ino) == before
    assert "timezone Europe/Berlin" in (out / "ks" / "kvm2.example.com.cfg").read_text()

    (tmp_path / "overlays" / "common" / "etc" / "issue").write_text("new file\n")
    assert not build.build(options).up_to_date  # a new overlay file is a change


def test_verify_catches_a_one_byte_change(tmp_path: Path) -> None:
    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    assert ksbuild("build", str(site_path), "-o", str(out)).returncode == 0
    ok = ksbuild("verify", str(out))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "same      ks/kvm2.example.com.cfg" in ok.stdout
    target = out / "ks" / "kvm2.example.com.cfg"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    bad = ksbuild("verify", str(out))
    assert bad.returncode == 1
    assert "different ks/kvm2.example.com.cfg at byte 100" in bad.stdout


def test_verify_without_a_build_is_an_input_error(tmp_path: Path) -> None:
    result = ksbuild("verify", str(tmp_path))
    assert result.returncode == 2 and "no manifest here" in result.stderr


def test_source_date_epoch_from_git(tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is needed for this test")
    site_path = make_site(tmp_path)
    env = {"GIT_AUTHOR_DATE": "@1600000000 +0000", "GIT_COMMITTER_DATE": "@1600000000 +0000",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    for argv in (["init", "-q"], ["add", "."], ["commit", "-qm", "site"]):
        subprocess.run(["git", *argv], cwd=tmp_path, check=True, env={**os.environ, **env})
    epoch, origin = build.source_date_epoch([site_path], None)
    assert (epoch, origin) == (1600000000, "git commit of the inputs")


def media_site(tmp_path: Path, iso_mode: str = "per-site") -> Path:
    from tests.fixtures import centos_iso

    base = tmp_path / "base.iso"
    shutil.copyfile(centos_iso(), base)  # the fixture is a shared cache file: never touch it
    doc = site_doc(overlays="overlays", media={"path": "base.iso"},
                   outputs={"iso": iso_mode, "pxe": True},
                   pxe={"server": "http://10.1.0.5:8080", "tree_path": "/srv/ksbuild/pxe"})
    make_site(tmp_path)
    return write_site(tmp_path, doc)


def test_build_with_media_makes_iso_and_pxe_reproducibly(tmp_path: Path) -> None:
    site_path = media_site(tmp_path)
    first, second = tmp_path / "a" / "out", tmp_path / "b" / "out"
    one = ksbuild("build", str(site_path), "-o", str(first),
                  env={"TZ": "UTC", "SOURCE_DATE_EPOCH": "1700000000"}, umask=0o022)
    two = ksbuild("build", str(site_path), "-o", str(second),
                  env={"TZ": "America/New_York", "SOURCE_DATE_EPOCH": "1700000000",
                       "PYTHONHASHSEED": "7"}, umask=0o027)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = tree_bytes(first), tree_bytes(second)
    assert {"iso/site.iso", "pxe/tftp/pxelinux.0", "pxe/http/ks/kvm2.example.com.cfg"} <= set(a)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []
    document = json.loads((first / "manifest.json").read_text())
    kinds = {e["kind"] for e in document["inputs"]}
    assert {"site", "template", "overlay", "base-media", "boot-loader"} <= kinds
    assert {e["kind"] for e in document["outputs"]} == {"kickstart", "iso", "pxe"}
    checked = subprocess.run(["checkisomd5", str(first / "iso" / "site.iso")],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout


def test_incremental_with_per_host_isos(tmp_path: Path) -> None:
    site_path = media_site(tmp_path, "per-host")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    first = build.build(options)
    assert {"iso/kvm2.example.com.iso", "iso/cdh-host.c7.jevoncode.com.iso"} <= set(first.written)
    assert build.build(options).up_to_date
    untouched = out / "iso" / "cdh-host.c7.jevoncode.com.iso"
    before = untouched.stat().st_mtime_ns
    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][1]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    first_pxe = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pxe_files(out, "56")}
    installed = ksbuild("pxe", "-o", str(out / "pxe"), "--done", "cdh-host.c7.jevoncode.com")
    assert installed.returncode == 0, installed.stderr
    local_entry = (out / "pxe/tftp/pxelinux.cfg/01-52-54-00-12-34-56").read_bytes()
    changed = build.build(options)
    assert "iso/kvm2.example.com.iso" in changed.written
    assert "iso/cdh-host.c7.jevoncode.com.iso" not in changed.written
    assert "ks/cdh-host.c7.jevoncode.com.cfg" not in changed.written
    assert untouched.stat().st_mtime_ns == before
    # The PXE tree: only the changed host's files are rewritten; the other host, which has
    # installed meanwhile, keeps its local-boot entry.
    assert "pxe/http/ks/kvm2.example.com.cfg" in changed.written
    assert not [p for p in changed.written if "cdh-host" in p or "34-56" in p or "34:56" in p]
    assert (out / "pxe/tftp/pxelinux.cfg/01-52-54-00-12-34-56").read_bytes() == local_entry
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pxe_files(out, "56")
            if "pxelinux.cfg" not in str(p) and "grub.cfg-" not in str(p)
            and "ipxe" not in str(p)} == {
        p: v for p, v in first_pxe.items() if "pxelinux.cfg" not in str(p)
        and "grub.cfg-" not in str(p) and "ipxe" not in str(p)}


def pxe_files(out: Path, mac_end: str) -> list[Path]:
    """The PXE files of the host whose MAC ends in `mac_end` (entries and kickstart)."""
    tree = out / "pxe"
    return sorted(p for p in tree.rglob("*") if p.is_file() and (
        p.name.endswith(mac_end) or p.name.endswith(f"{mac_end}.ipxe")
        or p.name == "cdh-host.c7.jevoncode.com.cfg"))
