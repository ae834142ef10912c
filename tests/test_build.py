"""`ksbuild build` and `verify`: reproducible bytes, a manifest that proves it, no needless
work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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


def output_files(root: Path) -> list[Path]:
    """The output folder's files as a reader sees them: through the symlinks ks/, iso/, pxe/
    and manifest.json into the current generation (not the generations themselves)."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != ".ksbuild")
        found += [Path(folder) / name for name in files]
    return sorted(p for p in found if p.is_file())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in output_files(root)}


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in output_files(root)}


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
    # The outputs follow the umask: a kickstart carries a password hash (issue 11 item 15).
    assert set(modes(first).values()) == {0o644}
    assert set(modes(second).values()) == {0o600}


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


def media_site_without(tmp_path: Path, pxe_key: str) -> Path:
    site_path = media_site(tmp_path)
    doc = yaml.safe_load(site_path.read_text())
    del doc["pxe"][pxe_key]
    return write_site(tmp_path, doc)


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
    # The old kickstarts went to the trash (build.TRASH), the old ISO was freed at once.
    trashed = [p for p in (out / build.TRASH).rglob("*") if p.is_file()]
    assert trashed and all(p.stat().st_size < untouched.stat().st_size / 8 for p in trashed)
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


# Issue 16: the command's start-up. A module a build does not use is imported where it is used,
# not by every `ksbuild build`: a no-op build reads its state and the inputs' stats only; one
# after a host changed renders and validates that host and writes its PXE files, from a base
# ISO and boot loaders the tree has copies of already (no ISO repack, pycdlib, download).
NO_OP_IMPORTS_NONE_OF = (
    "builder.site", "yaml", "builder.kickstart", "jinja2", "pykickstart", "builder.overlay",
    "builder.media", "pycdlib", "builder.pxe", "builder.secureboot", "subprocess",
    "concurrent.futures", "logging", "tempfile", "ctypes", "threading", "builder.trash")
ONE_HOST_IMPORTS_NONE_OF = (
    "pycdlib", "builder.media.iso", "builder.media.flavor", "builder.media.writer",
    "builder.pxe.installtree", "socket", "configparser", "importlib.resources",
    "concurrent.futures", "logging", "ctypes")


def imports_of(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str],
                                                          set[str]]:
    """`ksbuild ARGS` under -X importtime: the process, and the modules it imported from the
    builder package on (not those of the interpreter's own start-up)."""
    full_env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "builder", *args],
                          cwd=REPO, env={**full_env, **env}, text=True, capture_output=True,
                          timeout=600)
    names = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
             if line.startswith("import time:")]
    return done, set(names[names.index("builder"):])


def among(names: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names for p in packages if n == p or n.startswith(p + "."))


def test_no_op_and_one_host_builds_import_only_what_they_use(tmp_path: Path) -> None:
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    build.build(build.Options(site=site_path, out=out, source_date_epoch=1700000000))
    done, names = imports_of("build", str(site_path), "-o", str(out), env=env)
    assert done.returncode == 0 and "nothing to do" in done.stderr, done.stderr[-2000:]
    assert "builder.build" in names and among(names, NO_OP_IMPORTS_NONE_OF) == []

    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][1]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done, names = imports_of("build", str(site_path), "-o", str(out), env=env)
    assert done.returncode == 0 and "kickstarts: 1 written" in done.stderr, done.stderr[-2000:]
    # It rendered, validated, checked the base's first stage and wrote the PXE tree.
    assert {"jinja2", "pykickstart.parser", "builder.secureboot", "builder.pxe.tree"} <= names
    assert among(names, ONE_HOST_IMPORTS_NONE_OF) == []


def pxe_files(out: Path, mac_end: str) -> list[Path]:
    """The PXE files of the host whose MAC ends in `mac_end` (entries and kickstart)."""
    tree = out / "pxe"
    return sorted(p for p in output_files(tree) if (
        p.name.endswith(mac_end) or p.name.endswith(f"{mac_end}.ipxe")
        or p.name == "cdh-host.c7.jevoncode.com.cfg"))


# ---------------------------------------------------------------------------------------------
# Issue 11: configs that name the final folder, one build at a time, nothing written before
# the inputs are checked, all-or-nothing outputs.


def test_verify_passes_on_a_fresh_build_without_tree_path(tmp_path: Path) -> None:
    """Without pxe.tree_path the configs name OUT/pxe (not the temporary folder the tree is
    written in), and `verify`, which rebuilds elsewhere, gets the same bytes."""
    site_path = media_site_without(tmp_path, "tree_path")
    out = tmp_path / "out"
    built = ksbuild("build", str(site_path), "-o", str(out))
    assert built.returncode == 0, built.stderr
    nginx = (out / "pxe/nginx.conf").read_text()
    assert f"\n        root {out.absolute()}/pxe/http;\n" in nginx
    assert f"\ntftp-root={out.absolute()}/pxe/tftp\n" in (out / "pxe/dnsmasq.conf").read_text()
    assert ".part" not in nginx and ".v/" not in nginx
    verified = ksbuild("verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_second_build_into_one_folder_waits_for_the_first(tmp_path: Path) -> None:
    import fcntl

    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    (out / ".ksbuild").mkdir(parents=True)
    log = tmp_path / "second.log"
    with (out / ".ksbuild/lock").open("a") as held, log.open("w") as stderr:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a first, slow build holds
        second = subprocess.Popen([sys.executable, "-m", "builder", "build", str(site_path),
                                   "-o", str(out)], cwd=REPO, stderr=stderr, text=True)
        try:
            deadline = time.monotonic() + 60
            while "waiting" not in log.read_text():
                assert second.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            time.sleep(0.5)
            assert second.poll() is None and not (out / "ks").exists()
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        assert second.wait(120) == 0, log.read_text()
    assert f"another ksbuild build is writing {out}: waiting" in log.read_text()
    assert (out / "ks/kvm2.example.com.cfg").is_file()


def test_no_op_check_does_not_trust_an_output_replaced_on_disk(tmp_path: Path) -> None:
    """A kickstart replaced by another file of the same size and time (another inode) is not
    what the state records: the next build restores it instead of saying nothing to do."""
    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    target = out / "ks" / "kvm2.example.com.cfg"
    good, stat = target.read_bytes(), target.stat()
    forged = tmp_path / "forged"
    forged.write_bytes(good.replace(b"selinux", b"SELINUX", 1))
    os.utime(forged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(forged, target.resolve())
    again = build.build(options)
    assert not again.up_to_date and "ks/kvm2.example.com.cfg" in again.written
    assert target.read_bytes() == good


def test_bad_media_path_fails_before_anything_is_written(tmp_path: Path) -> None:
    doc = site_doc(media={"path": "missing.iso"}, outputs={"iso": "per-site", "pxe": False})
    site_path = write_site(tmp_path, doc)
    out = tmp_path / "out"
    failed = ksbuild("build", str(site_path), "-o", str(out), "-q")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert "missing.iso" in failed.stderr and "Traceback" not in failed.stderr
    assert not out.exists()


def test_a_pxe_site_without_a_server_fails_before_anything_is_written(tmp_path: Path) -> None:
    site_path = media_site_without(tmp_path, "server")
    out = tmp_path / "out"
    failed = ksbuild("build", str(site_path), "-o", str(out))
    assert failed.returncode == 2 and "server" in failed.stderr, failed.stderr
    assert not (out / "ks").exists() and not (out / "iso").exists()


def test_pxe_into_the_build_folder_then_build_again_leaves_one_tree(tmp_path: Path) -> None:
    """`ksbuild pxe -o OUT/pxe` (the README's command) between two builds into OUT: the
    build takes the tree back and nothing of the standalone one is left."""
    site_path = media_site(tmp_path)
    out = tmp_path / "out"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    assert ksbuild("build", str(site_path), "-o", str(out), env=env).returncode == 0
    first = tree_bytes(out)
    alone = ksbuild("pxe", str(site_path), "--base", str(tmp_path / "base.iso"), "-o",
                    str(out / "pxe"), env=env)
    assert alone.returncode == 0, alone.stderr
    assert (out / "pxe/hosts.json").is_file() and not os.readlink(out / "pxe").startswith(".ks")
    again = ksbuild("build", str(site_path), "-o", str(out), env=env)
    assert again.returncode == 0, again.stderr
    assert tree_bytes(out) == first and debris(out) == []


def writing(out: Path) -> bool:
    """A build into OUT has started writing: a new generation beside the current one (or,
    before generations, the temporary names outputs were written under)."""
    return len(list(out.glob(".ksbuild/.current.*.v"))) > 1 or any(
        next(out.glob(pattern), None) for pattern in (".pxe.*.part", "iso/.*.part", "ks/.*.part"))


def debris(out: Path) -> list[str]:
    """What is in OUT beyond the outputs, their current generation, its spare (the one it
    replaced, kept to make the next from), the locks and caches, and the trash (files
    replaced, deleted during the next build)."""
    link = out / ".ksbuild" / "current"
    current = os.readlink(link) if link.is_symlink() else ""
    extra = [p.name for p in out.iterdir()
             if p.name not in ("ks", "iso", "pxe", "manifest.json", ".ksbuild", ".pxe.lock")]
    extra += [f".ksbuild/{p.name}" for p in (out / ".ksbuild").iterdir()
              if p.name not in ("lock", "current", "state.json", current, f"{current}.spare",
                                "site-cache", "site-cache.delta", "templates", "trash")]
    extra += [str(p) for p in out.rglob("*") if p.name.endswith((".part", ".old", ".link", ".tmp"))]
    return extra


def test_temporary_files_of_a_build_killed_after_its_switch_go_with_the_next_builds(
        tmp_path: Path) -> None:
    """A build killed just after its switch, while it marked its spare refilled, left the
    marker's temporary file in what is now the current generation (seen in CI). The next
    build keeps that generation as its spare and the one after makes its own from it: the
    file must not come along. Nor may the temporary symlink of an entry of OUT it was
    making (here of a PXE tree the site no longer has)."""
    site_path = make_site(tmp_path)
    doc = yaml.safe_load(site_path.read_text())
    out = tmp_path / "out"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    assert ksbuild("build", str(site_path), "-o", str(out), env=env).returncode == 0
    current = out / ".ksbuild" / os.readlink(out / ".ksbuild" / "current")
    (current / ".spare-refilled.x1y2z3w4.part").write_bytes(b"")
    os.symlink(".ksbuild/current/pxe", out / ".pxe.link")
    for zone in ("Europe/Berlin", "UTC"):
        doc["hosts"][1]["timezone"] = zone
        write_site(tmp_path, doc)
        done = ksbuild("build", str(site_path), "-o", str(out), env=env)
        assert done.returncode == 0, done.stderr
    assert debris(out) == []


def test_killed_builds_leave_old_or_new_outputs_never_a_mix_and_no_debris(
        tmp_path: Path) -> None:
    """`ksbuild build` of an ISO + PXE site, killed (SIGKILL, or SIGINT to its process group
    as Ctrl-C sends) at points spread over its run: a reader then finds exactly the outputs of
    one of the two site versions, and the next build leaves nothing of the dead ones."""
    site_path = media_site(tmp_path)
    versions = [yaml.safe_load(site_path.read_text())]
    versions.append(yaml.safe_load(site_path.read_text()))
    versions[1]["hosts"][1]["timezone"] = "Europe/Berlin"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    expected = []
    for number, doc in enumerate(versions):  # each version's outputs, built in peace
        write_site(tmp_path, doc)
        started = time.monotonic()
        done = ksbuild("build", str(site_path), "-o", str(tmp_path / f"ref{number}"), env=env)
        assert done.returncode == 0, done.stderr
        expected.append(tree_bytes(tmp_path / f"ref{number}"))
    duration = time.monotonic() - started
    assert expected[0] != expected[1]
    out = tmp_path / "out"
    write_site(tmp_path, versions[0])
    assert ksbuild("build", str(site_path), "-o", str(out), env=env).returncode == 0
    now = 0
    outcomes = []
    left = []
    for step in range(12):  # from just after the start to just after the switch, both ways
        how = ("kill", "int")[step % 2]
        write_site(tmp_path, versions[1 - now])
        proc = subprocess.Popen([sys.executable, "-m", "builder", "build", str(site_path),
                                 "-o", str(out)], cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **env})
        if step < 4:  # while it starts: loading, checking, hashing
            time.sleep(duration * 0.1 * step)
        else:  # once its new generation exists: while it writes, switches, cleans up
            deadline = time.monotonic() + 60
            while not writing(out) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(duration * (step - 4) / 12)
        if how == "kill":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
        seen = tree_bytes(out)
        assert seen in expected, (step, how, sorted(
            name for name in set(seen) | set(expected[0])
            if seen.get(name) != expected[0].get(name)))
        now = expected.index(seen)
        outcomes.append((step, how, proc.returncode, now))
        left += debris(out)
    assert any(code != 0 for _f, _h, code, _n in outcomes), outcomes  # some were cut short
    assert left, "no kill left anything for the next build to clean up: the test cannot fail"
    write_site(tmp_path, versions[1 - now])
    final = ksbuild("build", str(site_path), "-o", str(out), env=env)
    assert final.returncode == 0, final.stderr
    assert tree_bytes(out) == expected[1 - now]
    assert debris(out) == []


def test_remove_tree_removes_everything_and_follows_no_symlink(tmp_path: Path) -> None:
    """A replaced generation is removed by several threads (output.remove_tree): all of it,
    and nothing a symlink in it points at."""
    from builder.output import remove_tree

    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("kept\n")
    tree = tmp_path / "tree"
    for number in range(50):
        folder = tree / f"d{number % 5}" / "deeper"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{number}").write_text(f"{number}\n")
    (tree / "link-to-folder").symlink_to(outside / "keep")
    (tree / "d0" / "link-to-file").symlink_to(outside / "keep" / "file")
    remove_tree(tree)
    assert not os.path.lexists(tree)
    assert (outside / "keep" / "file").read_text() == "kept\n"


def test_manifest_bytes_are_what_json_dumps_writes() -> None:
    """The manifest is written by format strings (the json module's indented encoder is too
    slow for 60,000 entries): its bytes are json.dumps(indent=2, sort_keys=True) of the
    document, entries sorted by kind and path, whatever the names hold."""
    from builder.manifest import Entry, dumps

    outputs = [Entry("pxe", 'pxe/http/ks/"quoted"\\.cfg', "b" * 64, 3),
               Entry("kickstart", "ks/h\u00f6st\u2028.cfg", "a" * 64, 10),
               Entry("iso", "iso/site.iso", "c" * 64, 1 << 40), Entry("iso", "iso/a.iso", "d", 0)]
    inputs = [Entry("site", "site.yaml", "e" * 64, 5)]
    sections = {"secure_boot": {"warnings": ["w\u00e9"], "z": 1}}
    fields = ("kind", "path", "sha256", "size")
    document = {"ksbuild": "1.0", "source_date_epoch": 1700000000, **sections,
                "inputs": [dict(zip(fields, e)) for e in inputs],
                "outputs": [dict(zip(fields, e)) for e in sorted(outputs)]}
    expected = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    assert dumps("1.0", 1700000000, inputs, outputs, sections) == expected
    assert dumps("1.0", 1, [], [], None) == (json.dumps(
        {"ksbuild": "1.0", "source_date_epoch": 1, "inputs": [], "outputs": []},
        indent=2, sort_keys=True) + "\n").encode()
