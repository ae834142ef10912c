"""Issue 16: an incremental build's outputs are byte for byte those of a clean build of the
same inputs, whatever was edited (a host added, renamed, removed, its MAC changed, a default,
a template or an overlay file changed); and it rewrites only what the edit touches."""

from __future__ import annotations

import copy
import hashlib
import json
import marshal
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from builder import build, kickstart, manifest, records
from builder.errors import InputError
from builder.media import fetch
from builder.pxe.menus import BootHost, Menus, host_files
from builder.pxe.tree import BaseIso
from tests.test_build import make_site, media_site, tree_bytes

Edit = Callable[[dict[str, Any], Path], None]


def add_host(doc: dict[str, Any], _: Path) -> None:
    host = copy.deepcopy(doc["hosts"][0])
    host.update(hostname="added.example.com", mac="52:54:00:12:34:99")
    host["bridge"]["address"] = "192.168.1.199/16"
    doc["hosts"].append(host)


def change_mac(doc: dict[str, Any], _: Path) -> None:
    doc["hosts"][0]["mac"] = "52:54:00:12:34:98"


def rename_host(doc: dict[str, Any], _: Path) -> None:
    doc["hosts"][0]["hostname"] = "renamed.example.com"


def remove_host(doc: dict[str, Any], _: Path) -> None:
    del doc["hosts"][-1]


def change_default(doc: dict[str, Any], _: Path) -> None:
    doc["defaults"]["timezone"] = "Europe/Berlin"


def change_template(_: dict[str, Any], root: Path) -> None:
    template = root / "templates" / "host.ks.j2"
    template.write_text(template.read_text() + "\n# an edited template\n")


def change_overlay(_: dict[str, Any], root: Path) -> None:
    (root / "overlays" / "common" / "etc" / "motd").write_text("managed, edited\n")


def add_own_overlay(doc: dict[str, Any], root: Path) -> None:
    """A host's own folder appears (hosts/<name>): that host's key must change (build.host_keys
    reads the overlay of a host without one once for all)."""
    own = root / "overlays" / "hosts" / doc["hosts"][0]["hostname"] / "etc"
    own.mkdir(parents=True)
    (own / "issue").write_text("this host's own\n")


EDITS: list[Edit] = [add_host, change_mac, rename_host, change_default, change_template,
                     change_overlay, remove_host, add_own_overlay]


def test_incremental_builds_equal_clean_builds(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(kickstart.template_dir(), templates)
    monkeypatch.setenv("KSBUILD_TEMPLATES", str(templates))
    site_path = media_site(tmp_path, "per-host")
    options = build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000)
    build.build(options)
    for number, edit in enumerate(EDITS):
        doc = yaml.safe_load(site_path.read_text())
        edit(doc, tmp_path)
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        incremental = build.build(options)
        assert not incremental.up_to_date, edit.__name__
        clean = tmp_path / f"clean{number}" / "out"
        build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
        mine, theirs = tree_bytes(options.out), tree_bytes(clean)
        assert sorted(mine) == sorted(theirs), edit.__name__
        assert [name for name in mine if mine[name] != theirs[name]] == [], edit.__name__
        assert grub_entries_apart(options.out) == grub_entries_apart(clean) == [], edit.__name__
        shutil.rmtree(clean.parent)


def grub_entries_apart(out: Path) -> list[str]:
    """The hosts' tftp/grub.cfg-01-MAC entries that are not one file (one inode) with their
    grub.cfg-mac-MAC: the same text under GRUB's two names."""
    tftp = out / "pxe" / "tftp"
    entries = sorted(tftp.glob("grub.cfg-01-*"))
    assert entries
    return [entry.name for entry in entries if not os.path.samefile(
        entry, tftp / f"grub.cfg-mac-{entry.name.removeprefix('grub.cfg-01-').replace('-', ':')}")]


def identities(root: Path) -> dict[str, tuple[int, int]]:
    return {name: (os.stat(root / name).st_ino, os.stat(root / name).st_mtime_ns)
            for name in tree_bytes(root)}


def test_one_host_changed_renders_and_rewrites_only_that_host(tmp_path: Path) -> None:
    """A change to one host renders its two kickstarts (ks/ and the PXE tree's) in one pass
    and rewrites exactly its files: the kickstarts, its boot entries, the PXE index and the
    manifest; every other file is the previous one (hard-linked: the base ISO is not even
    opened to extract the kernel and initrd again), and all equal a clean build's."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    before = identities(out)
    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][1]["source"] = "http://mirror.example.com/centos/7/os/x86_64/"  # inst.repo=
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    rendered: list[tuple[str, bool]] = []
    passes: list[list[str]] = []
    render_host, render_variants = kickstart.Renderer.render_host, kickstart.render_variants

    def counting_host(self: kickstart.Renderer, host: Any, extra: Any = None) -> str:
        rendered.append((host.hostname, extra is not None))
        return render_host(self, host, extra)

    def counting_pass(site: Any, variants: Any, jobs: Any = None, **more: Any) -> Any:
        passes.append(sorted(variants))
        return render_variants(site, variants, jobs, **more)

    extracted: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kickstart.Renderer, "render_host", counting_host)
        patch.setattr(kickstart, "render_variants", counting_pass)
        patch.setattr(BaseIso, "copy", lambda self, path, target: extracted.append(path))
        patch.setattr(pycdlib.PyCdlib, "open_fp", lambda self, fp: extracted.append("open"))
        changed = build.build(options)
    assert passes == [["ks", "pxe"]]
    assert extracted == []
    assert sorted(rendered) == [("kvm2.example.com", False), ("kvm2.example.com", True)]
    entries = host_files(doc["hosts"][1]["mac"].lower()).values()
    expected = {"ks/kvm2.example.com.cfg", "pxe/http/ks/kvm2.example.com.cfg",
                "pxe/hosts.json", "manifest.json", *(f"pxe/{name}" for name in entries)}
    after = identities(out)
    assert {name for name in after if after[name] != before.get(name)} == expected
    assert set(changed.written) == expected
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)
    assert build.build(options).up_to_date


def test_a_rebuild_trusts_no_output_edited_since_it_was_recorded(tmp_path: Path) -> None:
    """A rebuild compares a new file with the current one by the sha256 the manifest
    recorded for it only while the file is the one recorded: outputs edited by hand since
    (the same inode, other bytes) are written again, and the result equals a clean build."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    doc = yaml.safe_load(site_path.read_text())
    entry = out / "pxe" / host_files(doc["hosts"][0]["mac"].lower())["pxelinux"]
    edited = [entry, out / "ks" / "kvm2.example.com.cfg", out / "pxe/http/ks/kvm2.example.com.cfg",
              out / "pxe/tftp/images/initrd.img"]
    for path in edited:
        with path.open("r+b") as handle:  # in place: the inode the state recorded
            handle.write(b"#edited")
    doc["defaults"]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    changed = build.build(options)
    assert f"pxe/{entry.relative_to(out / 'pxe')}" in changed.written
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)


def test_a_new_shim_at_the_same_path_rebuilds_the_tree(tmp_path: Path) -> None:
    """pxe.shim is an input like the site file: replacing the file (same path) is no no-op."""
    site_path = media_site(tmp_path, "none")
    shim = tmp_path / "shimx64.efi"
    shim.write_bytes(b"MZ first shim")
    doc = yaml.safe_load(site_path.read_text())
    doc["pxe"]["shim"] = str(shim)
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    options = build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000)
    build.build(options)
    assert (options.out / "pxe/tftp/BOOTX64.EFI").read_bytes() == b"MZ first shim"
    shim.write_bytes(b"MZ the second shim")
    again = build.build(options)
    assert not again.up_to_date
    assert "pxe/tftp/BOOTX64.EFI" in again.written
    assert (options.out / "pxe/tftp/BOOTX64.EFI").read_bytes() == b"MZ the second shim"


def test_the_spare_never_brings_back_a_file_replaced_in_out(tmp_path: Path) -> None:
    """A build makes its new generation from the one it replaced, kept as a spare (hard links
    to the files both share). Outputs replaced by hand in OUT (other inodes, the same size
    and time) and edited in place (shared with the spare) are restored, and stay restored
    through the next builds, which take what they keep from the spare: each build equals a
    clean one. (The file a rebuild writes may get the freed inode number of the one it
    replaces, with the same size and time: only what the build did tells them apart.)"""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    doc = yaml.safe_load(site_path.read_text())
    replaced = out / "ks" / "kvm2.example.com.cfg"
    in_place = out / "pxe" / "http" / "ks" / "kvm2.example.com.cfg"
    good = replaced.read_bytes(), in_place.read_bytes()
    stat = replaced.stat()
    forged = tmp_path / "forged"
    forged.write_bytes(good[0].replace(b"selinux", b"SELINUX", 1))
    os.utime(forged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(forged, replaced.resolve())
    with in_place.open("r+b") as handle:
        handle.write(b"#edited")
    first = build.build(options)
    assert {"ks/kvm2.example.com.cfg", "pxe/http/ks/kvm2.example.com.cfg"} <= set(first.written)
    for number, timezone in enumerate(("Europe/Berlin", "Europe/Paris", "Europe/Rome")):
        doc["hosts"][0]["timezone"] = timezone  # another host: kvm2's files are kept
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        again = build.build(options)
        assert not {"ks/kvm2.example.com.cfg"} & set(again.written), number
        assert (replaced.read_bytes(), in_place.read_bytes()) == good, number
        assert list(out.glob(".ksbuild/.current.*.v.spare")), "no spare: the test cannot fail"
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)


def folders(root: Path) -> list[str]:
    """Every folder under root as a reader sees it (through OUT's symlinks), and each one's
    files: what the outputs look like, empty folders included (not the PXE tree's lock
    file, which `ksbuild serve` may hold: it stays when the tree goes)."""
    return sorted(f"{os.path.relpath(folder, root)}: {sorted(set(names) - {'.pxe.lock'})}"
                  for folder, _dirs, names in os.walk(root, followlinks=True)
                  if ".ksbuild" not in folder)


@pytest.mark.parametrize("outputs", [({"iso": "per-host", "pxe": True},
                                      {"iso": "none", "pxe": False},
                                      {"iso": "per-site", "pxe": True})])
def test_outputs_switched_off_and_on_leave_what_a_clean_build_leaves(
        tmp_path: Path, outputs: tuple[dict[str, Any], ...]) -> None:
    """A build made from the spare of one that had an ISO and a PXE tree, for a site that
    asks for neither now (and then for both again): the outputs, folders included, are a
    clean build's; no empty iso/ or pxe/ is left behind."""
    site_path = media_site(tmp_path)
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    doc = yaml.safe_load(site_path.read_text())
    for number, wanted in enumerate(outputs):
        doc["outputs"] = wanted
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        build.build(options)
        clean = tmp_path / f"clean{number}"
        build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
        lock = {".pxe.lock"}  # see folders()
        assert {k: v for k, v in tree_bytes(out).items() if k not in lock} == {
            k: v for k, v in tree_bytes(clean).items() if k not in lock}, wanted
        assert folders(out) == folders(clean), wanted
        assert list(out.glob(".ksbuild/.current.*.v.spare")), "no spare: the test cannot fail"


@pytest.mark.parametrize("edit", ["one host", "a kickstart edited in OUT"])
def test_a_host_switched_to_local_boot_during_a_build_stays_switched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str) -> None:
    """`ksbuild serve` switches a host to local boot (its marker and entries, under the
    tree's lock) after a build decided which PXE files it keeps from its spare, before the
    build takes that lock: the new tree has the host's local entries with its marker (never
    the install ones: it would install again), and the manifest tells each file's bytes. For
    a rebuilt tree, and for one linked whole (nothing in it changed)."""
    from builder.pxe import state as pxestate
    from builder.pxe.menus import local_entries

    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    doc = yaml.safe_load(site_path.read_text())
    if edit == "one host":
        doc["hosts"][0]["kernel_args"] = ["console=ttyS1"]
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    else:  # no PXE input changed: the tree is linked whole
        with (out / "ks" / "kvm2.example.com.cfg").open("r+b") as handle:
            handle.write(b"#edited")
    host = doc["hosts"][-1]
    prune = build._prune_spare

    def then_serve_reports(*args: Any) -> set[str]:
        emptied = prune(*args)
        assert pxestate.set_installed(out / "pxe", host["hostname"], True)
        return emptied
    monkeypatch.setattr(build, "_prune_spare", then_serve_reports)
    build.build(options)
    assert (out / "pxe" / pxestate.INSTALLED / host["hostname"]).is_file()
    for relative, text in local_entries(host["hostname"], host["mac"].lower()).items():
        assert (out / "pxe" / relative).read_text() == text, relative
    document = json.loads((out / "manifest.json").read_text())
    wrong = [e["path"] for e in document["outputs"]
             if hashlib.sha256((out / e["path"]).read_bytes()).hexdigest() != e["sha256"]]
    assert wrong == []
    assert build.build(options).up_to_date  # the state recorded the files as they are


def test_boot_entries_a_default_left_as_they_were_are_kept_not_rendered(tmp_path: Path) -> None:
    """A field of `defaults` the boot entries do not read (timezone) changes every kickstart,
    no entry: the tree writer renders none (each host's entry key is the same), leaves them
    in the spare and copies their lines of hosts.json; the build takes them for OUT's files
    (their recorded identity and sha256) instead of stat'ing each (40,000 for a large fleet).
    None is rewritten, the next build has nothing to do, and the tree is a clean build's."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    doc = yaml.safe_load(site_path.read_text())
    entries = {f"pxe/{name}" for host in doc["hosts"]
               for name in host_files(host["mac"].lower()).values()}
    before = identities(out)
    change_default(doc, tmp_path)
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    taken: list[frozenset[str]] = []
    output_entries = build._output_entries

    rendered: list[str] = []
    host_entries = Menus.host

    def noting(*args: Any) -> Any:
        taken.append(args[-1])
        return output_entries(*args)

    def rendering(self: Menus, host: BootHost, local: bool) -> dict[str, str]:
        rendered.append(host.hostname)
        return host_entries(self, host, local)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "_output_entries", noting)
        patch.setattr(Menus, "host", rendering)
        result = build.build(options)
    assert rendered == []
    assert entries <= taken[0]
    assert "ks/kvm2.example.com.cfg" in result.written
    assert entries.isdisjoint(result.written)
    after = identities(out)
    assert {name: after[name] for name in entries} == {name: before[name] for name in entries}
    assert build.build(options).up_to_date
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)


@pytest.mark.parametrize("refilled", [True, False], ids=["refilled", "killed before marked"])
def test_after_a_default_changed_the_next_build_finds_every_file_in_its_spare(
        tmp_path: Path, refilled: bool) -> None:
    """A build that rewrote every kickstart (a default changed) gives the generation it
    replaced, its spare, links to what it wrote (_refill_replaced), then marks it so: the
    next build, one host changed, links nothing in (_relink_kept) and takes the other hosts'
    kickstarts and every boot entry as kept outputs (_output_entries stats only the changed
    host's files). Killed after the switch and before the mark, the spare may lack them: the
    next build links those of the unchanged hosts in at once. Either way it rewrites exactly
    the changed host's files, and its outputs are a clean build's."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    doc = yaml.safe_load(site_path.read_text())
    change_default(doc, tmp_path)
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    build.build(options)
    assert (out / build.REFILLED).exists()
    if not refilled:
        (out / build.REFILLED).unlink()
        spare = build.Generations(out / build.CURRENT).spare()
        assert spare is not None
        for path in (spare / "ks").iterdir():
            path.unlink()  # what a build killed while it refilled may leave
    doc["hosts"][-1]["timezone"] = "Asia/Tokyo"  # its kickstarts change, no boot entry
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    changed = doc["hosts"][-1]["hostname"]
    mine = {f"ks/{changed}.cfg", f"pxe/http/ks/{changed}.cfg"}
    relinked: list[list[str]] = []
    stated: list[list[str]] = []
    relink, output_entries = build._relink_kept, build._output_entries

    def relinking(out: Path, gen: Path, lacking: list[str]) -> None:
        relinked.append(lacking)
        relink(out, gen, lacking)

    def noting(gen: Path, out: Path, names: list[str], *rest: Any) -> Any:
        stated.append(sorted(set(names) - rest[-1]))
        return output_entries(gen, out, names, *rest)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "_relink_kept", relinking)
        patch.setattr(build, "_output_entries", noting)
        result = build.build(options)
    others = [host["hostname"] for host in doc["hosts"][:-1]]
    lacking = sorted([*(f"ks/{name}.cfg" for name in others),
                      *(f"pxe/http/ks/{name}.cfg" for name in others)])
    assert relinked == [[] if refilled else lacking]
    hosts_files = {f"pxe/{name}" for host in doc["hosts"]
                   for name in host_files(host["mac"].lower()).values()}
    hosts_files.update(f"{top}/{name}.cfg" for name in others for top in ("ks", "pxe/http/ks"))
    assert mine <= set(stated[0])
    assert hosts_files.isdisjoint(stated[0])  # the tree's shared files are stat'ed, as before
    assert set(result.written) == {*mine, "manifest.json"}
    # The mark is this generation's: the spare (the one before, which had it) does not keep
    # it, lest a build made from it and killed before its own refill be taken as refilled.
    spare = build.Generations(out / build.CURRENT).spare()
    assert spare is not None and not (spare / build.REFILLED.name).exists()
    assert (out / build.REFILLED).exists()
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)
    assert build.build(options).up_to_date


def test_the_files_a_build_replaced_go_to_the_trash_and_later_builds_delete_them(
        tmp_path: Path) -> None:
    """After a default changed, the old files the build replaced are not unlinked from the
    spare at its end (their last names: each unlink frees a file) but moved, whole, into
    OUT/.ksbuild/trash; the spare holds the new files, linked. A later build with work to do
    deletes them while it runs; its outputs are a clean build's."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    assert not (out / build.TRASH).exists()  # a first build replaced nothing
    old = {path.read_bytes() for path in (out / "ks").iterdir()}
    doc = yaml.safe_load(site_path.read_text())
    change_default(doc, tmp_path)
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = build.build(options)
    (folder,) = (out / build.TRASH).iterdir()
    trashed = [path.read_bytes() for path in folder.iterdir()]
    assert len(trashed) == len(result.written)  # each replaced file, the manifest too
    assert old <= set(trashed)
    spare = build.Generations(out / build.CURRENT).spare()
    assert spare is not None
    current = (out / build.CURRENT).resolve()
    for name in result.written:
        assert (spare / name).stat().st_ino == (current / name).stat().st_ino, name
    for zone in ("Asia/Tokyo", "UTC", "Europe/Paris"):  # builds with work to do
        doc["hosts"][-1]["timezone"] = zone
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        build.build(options)
        if not folder.exists():
            break
    assert not folder.exists(), "the trash of the default change was never emptied"
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)


def rebuild_and_compare(tmp_path: Path, site_path: Path, edit: Edit) -> list[str]:
    """`edit` the site, rebuild (noting how the manifest was written: "whole" or
    "spliced"), and compare the outputs with a clean build's."""
    options = build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000)
    doc = yaml.safe_load(site_path.read_text())
    edit(doc, tmp_path)
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    ways: list[str] = []
    dumps, update = manifest.dumps, manifest.update

    def whole(*args: Any) -> bytes:
        ways.append("whole")
        return dumps(*args)

    def spliced(*args: Any) -> bytes | None:
        data = update(*args)
        ways.append("spliced" if data is not None else "could not splice")
        return data
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest, "dumps", whole)
        patch.setattr(manifest, "update", spliced)
        assert not build.build(options).up_to_date
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(options.out) == tree_bytes(clean)
    shutil.rmtree(clean)
    assert build.build(options).up_to_date
    return ways


def one_host(doc: dict[str, Any], _: Path) -> None:
    doc["hosts"][-1]["timezone"] = "Europe/Berlin"


@pytest.mark.parametrize("edit", [one_host, change_mac, add_host, remove_host, rename_host])
def test_a_rebuild_that_changes_few_outputs_splices_their_rows_into_the_manifest(
        tmp_path: Path, edit: Edit) -> None:
    """The manifest of a rebuild that changed, added or removed a few outputs is the last
    one with those rows spliced in (what costs a large fleet's 60,000 rows), and its bytes
    are a clean build's; one that changes more rows than SPLICE_LIMIT writes it whole."""
    site_path = media_site(tmp_path, "none")
    build.build(build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000))
    assert rebuild_and_compare(tmp_path, site_path, edit) == ["spliced"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "SPLICE_LIMIT", 0)
        assert rebuild_and_compare(tmp_path, site_path, one_host_back) == ["whole"]


def test_outputs_are_taken_from_the_last_builds_tables_only_where_kept_and_recorded(
        tmp_path: Path) -> None:
    """_output_entries takes a kept output's identity and sha256 from the last build's
    tables (copied whole); an output not kept, or kept but not in those tables, is stat'ed
    and hashed; one of the last build's that is no more is gone; the manifest's own row is
    never an output's."""
    gen, out = tmp_path / "gen", tmp_path / "out"
    (gen / "ks").mkdir(parents=True)
    out.mkdir()
    names = [f"ks/{name}.cfg" for name in "abc"]
    for name in names:
        (gen / name).write_text(name)
    sha = {name: hashlib.sha256(name.encode()).hexdigest() for name in names}
    previous = {"ks/a.cfg": build._identity(gen / "ks/a.cfg"), "ks/gone.cfg": (1, 2, 3),
                manifest.MANIFEST: (4, 5, 6)}
    known = {"ks/a.cfg": "recorded", "ks/gone.cfg": "f" * 64, manifest.MANIFEST: ""}
    listed = build._output_entries(gen, out, names, previous, known, {},
                                   frozenset({"ks/a.cfg", "ks/b.cfg", "ks/gone.cfg"}))
    assert sorted(listed.rows(gen)) == [("kickstart", "ks/a.cfg", "recorded", 8)] + [
        ("kickstart", name, sha[name], 8) for name in names[1:]]
    assert sorted(listed.fresh) == [("kickstart", name, sha[name], 8) for name in names[1:]]
    assert listed.gone == ["ks/gone.cfg"]
    assert sorted(listed.written) == names[1:]  # OUT has no ks/
    assert list(listed.recorded) == list(listed.hashes)  # in the order records.write needs
    assert sorted(listed.recorded) == names
    assert listed.recorded["ks/b.cfg"] == build._identity(gen / "ks/b.cfg")


def one_host_back(doc: dict[str, Any], _: Path) -> None:
    doc["hosts"][-1]["timezone"] = "UTC"


def in_place(path: Path, data: bytes) -> None:
    """`data` written into the file, its size and time kept: the same file (identity) to
    whoever stats it."""
    stat = path.stat()
    assert len(data) == stat.st_size
    with path.open("r+b") as stream:
        stream.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("damage", ["removed", "replaced", "truncated", "not laid out"])
def test_a_manifest_not_as_recorded_is_written_whole(tmp_path: Path, damage: str) -> None:
    """The last build's manifest removed, replaced (even by the same bytes: another file),
    truncated, or its layout broken in place (same size and time): the next one is written
    whole, never spliced into it, and equals a clean build's."""
    site_path = media_site(tmp_path, "none")
    build.build(build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000))
    path = tmp_path / "out" / ".ksbuild" / "current" / manifest.MANIFEST
    data = path.read_bytes()
    if damage == "removed":
        path.unlink()
    elif damage == "replaced":
        path.unlink()
        path.write_bytes(data)
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        in_place(path, data.replace(b'"outputs"', b'"outputz"'))
    expected = ["whole"] if damage in ("removed", "replaced", "truncated") else \
        ["could not splice", "whole"]
    assert rebuild_and_compare(tmp_path, site_path, one_host) == expected


@pytest.mark.parametrize(("name", "damage"), [
    (records.RECORDS, b""), (records.RECORDS, b"not marshal data"),
    (records.RECORDS, b"\xe9\x00\x00\x00"),
    (records.RECORDS, marshal.dumps([99, [], [], [], [], []])),
    ("keys.json", b"{not json"), ("keys.json", b'{"hosts": [], "changed": {}}')],
    ids=["empty", "garbage", "truncated", "another format", "keys: garbage", "keys: shape"])
def test_an_unreadable_table_of_outputs_rebuilds_from_nothing(tmp_path: Path, name: str,
                                                             damage: bytes) -> None:
    """The table the next build reads the outputs' identities and hashes from
    (builder.records), empty, garbage or of a format this code does not know, or the hosts'
    keys unreadable: a rebuild after a host changed takes nothing from the last build (what
    it renders equal to the live files is linked to them), and equals a clean one."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    table = out / ".ksbuild" / "current" / name
    assert table.is_file() and records.read(table.parent) is not None
    table.write_bytes(damage)
    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][0]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    again = build.build(options)
    assert not again.up_to_date
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)
    assert build.build(options).up_to_date


def test_a_pinned_local_base_iso_is_hashed_once_and_still_checked(tmp_path: Path) -> None:
    """media: {path, sha256}: the first build reads the ISO once for its sha256 (the pin's
    check and the manifest's entry), a rebuild after a host changed not at all (its size and
    mtime are the ones recorded with it); a pin edited to another value still fails."""
    site_path = media_site(tmp_path, "none")
    doc = yaml.safe_load(site_path.read_text())
    base = (site_path.parent / doc["media"]["path"]).resolve()
    doc["media"]["sha256"] = hashlib.sha256(base.read_bytes()).hexdigest()
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    options = build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000)
    hashed: list[Path] = []
    sha256_file = manifest.sha256_file

    def counting(path: Path) -> str:
        hashed.append(Path(path).resolve())
        return sha256_file(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest, "sha256_file", counting)
        patch.setattr(fetch, "_file_sha256", counting)
        build.build(options)
        assert hashed.count(base) == 1
        hashed.clear()
        doc["hosts"][0]["timezone"] = "Europe/Berlin"
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert not build.build(options).up_to_date
        assert base not in hashed
    doc["media"]["sha256"] = "0" * 64
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(InputError, match="not the pinned"):
        build.build(options)


@pytest.mark.parametrize("before", ["nothing", "a standalone tree with a host installed"])
def test_a_first_builds_spare_is_links_to_each_of_its_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: str) -> None:
    """A build with no generation to replace fills a spare with links to its outputs, part
    of them while the workers render (build._prelink); a file replaced after that (a tree
    the build takes over switches an installed host's entries, links loaders it had) is
    linked again: the spare holds each output's file, and nothing else."""
    from builder import site as site_module
    from builder.pxe import tree as pxe_tree

    site_path = media_site(tmp_path)
    out = tmp_path / "out"
    if before != "nothing":
        loaded = site_module.load(site_path)
        pxe_tree.build_tree(pxe_tree.Options(site=loaded, out=out / "pxe",
                                             base=tmp_path / "base.iso"))
        pxe_tree.switch(out / "pxe", done=[loaded.hosts[0].hostname])
    prelinked: dict[str, int] = {}
    prelink = build._prelink

    def recording(gen: Path, spare: Path) -> dict[str, int]:
        prelinked.update(prelink(gen, spare))
        return prelinked

    monkeypatch.setattr(build, "_prelink", recording)
    build.build(build.Options(site=site_path, out=out, source_date_epoch=1700000000))
    current = (out / ".ksbuild" / "current").resolve()
    spare = current.with_name(current.name + ".spare")
    names = {entry["path"] for entry in manifest.read(out)["outputs"]}
    assert {p.relative_to(spare).as_posix() for p in spare.rglob("*") if p.is_file()} == names
    inodes = {name: (current / name).stat().st_ino for name in names}
    assert all((spare / name).stat().st_ino == inodes[name] for name in names)
    assert len(prelinked) > len(names) // 2, "nothing linked meanwhile: the test cannot fail"
    replaced = {name for name, inode in prelinked.items() if inodes.get(name) != inode}
    assert bool(replaced) == (before != "nothing")


def test_kept_outputs_are_each_reused_hosts_files(tmp_path: Path) -> None:
    """What a build keeps of its spare: the kickstarts of unchanged hosts, the PXE kickstart
    of each reused host and the entries of those not installed; and the hosts all of whose
    files it keeps (present_hosts). Those the spare lacks are linked in (_relink_kept)."""
    from builder import site
    from tests.pxe_support import GUEST_SERVER, host_dicts, write_site

    hosts = tuple((f"kvm{n}.example.com", f"52:54:00:12:34:{n:02x}", f"10.0.2.{n + 20}")
                  for n in range(6))
    loaded = site.load(write_site(tmp_path, {"server": GUEST_SERVER}, hosts=host_dicts(hosts)))
    names = [host.hostname for host in loaded.hosts]
    reuse, unchanged = frozenset(names[:5]), frozenset(names[:4])
    entries = build._pxe_entry_files(loaded)

    def files(name: str) -> list[str]:
        return [f"pxe/http/ks/{name}.cfg", *entries(name)]

    for installed in (frozenset(), frozenset(names[1:3])):
        step = build.PxeStep("key", "shared", [], plan=(None, None),  # type: ignore[arg-type]
                             reuse=reuse)
        kept = build._kept_outputs(loaded, {}, unchanged, step, installed)
        expected = {f"ks/{name}.cfg" for name in unchanged} | {
            file for name in reuse
            for file in (files(name) if name not in installed else files(name)[:1])}
        assert kept == expected, installed
        assert step.present_hosts == reuse - installed


# ---------------------------------------------------------------------------------------------
# The previous build's outputs stat'ed by a forked child while the site loads (build.Stats).


def damaged_outputs(tmp_path: Path) -> tuple[Path, dict[str, records.Identity], set[str]]:
    """A built OUT with one output edited in place, one removed and one replaced by a copy
    (same bytes and mtime, another inode); its recorded identities, and the damaged ones."""
    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    build.build(build.Options(site=site_path, out=out, source_date_epoch=1700000000))
    edited, removed = sorted(p.relative_to(out).as_posix() for p in (out / "ks").iterdir())
    replaced = manifest.MANIFEST
    with (out / edited).open("r+b") as handle:
        handle.write(b"#edited")
    (out / removed).unlink()
    copy_of = out / (replaced + ".copy")
    shutil.copy2(out / replaced, copy_of)
    os.replace(copy_of, out / replaced)
    return out, build.read_state(out)["outputs"], {edited, removed, replaced}


def test_outputs_are_stated_in_their_folders_through_the_current_generation(
        tmp_path: Path) -> None:
    """_intact_outputs opens each folder once (through OUT's symlink into a generation, in
    whatever order the names come): a file edited in place or replaced, or a folder removed,
    is not intact; every descriptor it opened is closed."""
    out = tmp_path / "out"
    for name in ["gen/pxe/tftp/a", "gen/pxe/tftp/b", "ks/x.cfg", "ks/y.cfg", "gone/z", "top"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    (out / "pxe").symlink_to("gen/pxe")
    names = ["ks/x.cfg", "pxe/tftp/a", "ks/y.cfg", "top", "pxe/tftp/b", "gone/z"]
    recorded = {name: build._identity(out / name) for name in names}
    with (out / "ks/y.cfg").open("a") as handle:
        handle.write("# edited")
    shutil.copy2(out / "pxe/tftp/b", out / "b.copy")
    os.replace(out / "b.copy", out / "pxe/tftp/b")  # same size and time, another inode
    shutil.rmtree(out / "gone")
    descriptors = len(os.listdir("/proc/self/fd"))
    assert build._intact_outputs(out, recorded) == {"ks/x.cfg", "pxe/tftp/a", "top"}
    assert len(os.listdir("/proc/self/fd")) == descriptors
    # The no-op check's form: all intact or not, stopping at the first that is not.
    for damaged in ("ks/y.cfg", "pxe/tftp/b", "gone/z"):
        assert not build._outputs_intact(out, {"ks/x.cfg": recorded["ks/x.cfg"],
                                               damaged: recorded[damaged], "top": recorded["top"]})
        assert len(os.listdir("/proc/self/fd")) == descriptors
    assert build._outputs_intact(out, {name: recorded[name] for name in ["top", "pxe/tftp/a"]})


def reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_childs_stat_of_the_outputs_is_the_serial_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs edited, removed or replaced since they were recorded: the forked child's
    answer is the serial _intact_outputs' (used as it is: the parent does not stat again),
    and the child is reaped."""
    out, recorded, damaged = damaged_outputs(tmp_path)
    serial = build._intact_outputs(out, recorded)
    assert serial == set(recorded) - damaged and len(recorded) == 3
    stats = build.Stats(out, recorded)
    pid = stats.pid
    assert pid is not None

    def no_serial_stat(*args: Any) -> set[str]:
        raise AssertionError("the parent stat'ed the outputs itself")
    monkeypatch.setattr(build, "_intact_outputs", no_serial_stat)  # the child has its own
    assert stats.result() == serial
    assert reaped(pid)


def sleeps(out: Path, recorded: dict[str, records.Identity]) -> bytes:
    """Says it started (out/started: a signal sent before that could be lost) and sleeps."""
    (out / "started").touch()
    time.sleep(60)
    (out / "slept").touch()
    return b""


def started(out: Path) -> None:
    for _ in range(6000):
        if (out / "started").exists():
            return
        time.sleep(0.01)
    raise AssertionError("the child never started")


def killed(out: Path, recorded: dict[str, records.Identity]) -> bytes:
    os.kill(os.getpid(), signal.SIGKILL)
    return b""


def fails(out: Path, recorded: dict[str, records.Identity]) -> bytes:
    raise RuntimeError("a failing child")


def all_intact_exits_1(out: Path, recorded: dict[str, records.Identity]) -> bytes:
    """A whole answer, then a failure: not trusted either."""
    links = [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
    pipe = max(int(link.rpartition("/")[2]) for link in links
               if os.path.lexists(link) and os.readlink(link).startswith("pipe:"))
    os.write(pipe, build.Stats.MAGIC + len(recorded).to_bytes(8, "big") + b"\1" * len(recorded))
    os._exit(1)


def answering(body: Callable[[int], bytes]) -> Callable[[Path, dict[str, Any]], bytes]:
    return lambda out, recorded: build.Stats.MAGIC + len(recorded).to_bytes(8, "big") + body(
        len(recorded))


@pytest.mark.parametrize("child", [
    fails, killed, all_intact_exits_1, lambda out, recorded: b"garbage",
    answering(lambda n: b"\1" * (n - 1)), answering(lambda n: b"\1" * (n + 1)),
    answering(lambda n: b"\2" * n),
    lambda out, recorded: answering(lambda n: b"\1" * n)(out, recorded)[:-1],
    lambda out, recorded: b"other" + answering(lambda n: b"\1" * n)(out, recorded)[5:]],
    ids=["exception", "killed", "all intact, exit 1", "garbage", "short", "long",
         "not a flag", "truncated", "another magic"])
def test_a_failing_child_falls_back_to_the_serial_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: Any) -> None:
    out, recorded, damaged = damaged_outputs(tmp_path)
    monkeypatch.setattr(build, "_stats_answer", child)  # forked with it
    stats = build.Stats(out, recorded)
    pid = stats.pid
    assert pid is not None
    assert stats.result() == set(recorded) - damaged
    assert reaped(pid)


def test_a_child_interrupted_falls_back_to_the_serial_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C reaches the child too (the terminal's process group): it ends quietly."""
    out, recorded, damaged = damaged_outputs(tmp_path)
    monkeypatch.setattr(build, "_stats_answer", sleeps)
    stats = build.Stats(out, recorded)
    assert stats.pid is not None
    started(out)
    os.kill(stats.pid, signal.SIGINT)
    assert stats.result() == set(recorded) - damaged
    assert not (out / "slept").exists()


class Recorded(build.Stats):
    """Each child forked, and whether its answer was taken."""
    children: list[int] = []
    answered: list[bool] = []

    def __init__(self, out: Path, recorded: dict[str, records.Identity]) -> None:
        super().__init__(out, recorded)
        assert self.pid is not None
        self.children.append(self.pid)

    def _answer(self) -> set[str] | None:
        answer = super()._answer()
        self.answered.append(answer is not None)
        return answer


@pytest.fixture
def recorded_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A site and its first build (forking no child), the children of the next ones
    recorded (Recorded)."""
    monkeypatch.setattr(Recorded, "children", [])
    monkeypatch.setattr(Recorded, "answered", [])
    monkeypatch.setattr(build, "Stats", Recorded)
    site_path = make_site(tmp_path)
    out = tmp_path / "out"
    build.build(build.Options(site=site_path, out=out, source_date_epoch=1700000000))
    assert Recorded.children == []
    return site_path, out


def test_a_rebuild_stats_its_outputs_in_a_child_holding_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded_build: tuple[Path, Path]
) -> None:
    """A first build and a no-op one fork no child; a rebuild does, whose answer it uses, and
    reaps it. The child holds no descriptor of the parent's but its pipe (OUT's lock would
    stay held while it lives)."""
    site_path, out = recorded_build
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    assert build.build(options).up_to_date
    assert Recorded.children == []
    listing = tmp_path / "fds"
    answer = build._stats_answer

    def listing_fds(out: Path, recorded: dict[str, records.Identity]) -> bytes:
        fds = os.listdir("/proc/self/fd")  # with the one it read them through, now closed
        listing.write_text("\n".join(os.readlink(f"/proc/self/fd/{fd}") for fd in fds
                                     if os.path.lexists(f"/proc/self/fd/{fd}")))
        return answer(out, recorded)
    monkeypatch.setattr(build, "_stats_answer", listing_fds)
    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][0]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    changed = build.build(options)
    assert changed.written == [f"ks/{doc['hosts'][0]['hostname']}.cfg", "manifest.json"]
    assert len(Recorded.children) == 1 and reaped(Recorded.children[0])
    assert Recorded.answered == [True]
    fds = listing.read_text().splitlines()
    assert not any(fd.endswith("lock") for fd in fds) and len(fds) <= 4, fds
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)


def test_a_rebuild_makes_its_renderer_while_the_child_stats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded_build: tuple[Path, Path]
) -> None:
    """A host changed: the rebuild makes its one renderer (parser, templates) before it
    waits for the child's stats, and renders with it. No host's key changed (an output
    edited): the renderer is made once the stats tell which host to render again."""
    site_path, out = recorded_build
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    events: list[str] = []
    make, result = kickstart.Renderer.__init__, Recorded.result

    def making(self: kickstart.Renderer, *args: Any, **kwargs: Any) -> None:
        events.append("renderer made")
        make(self, *args, **kwargs)

    def waiting(self: Recorded) -> set[str]:
        events.append("stats waited for")
        return result(self)
    monkeypatch.setattr(kickstart.Renderer, "__init__", making)
    monkeypatch.setattr(Recorded, "result", waiting)
    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][0]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    kickstart_name = f"ks/{doc['hosts'][0]['hostname']}.cfg"
    assert build.build(options).written == [kickstart_name, "manifest.json"]
    assert events == ["renderer made", "stats waited for"]
    events.clear()
    with (out / kickstart_name).open("a") as handle:
        handle.write("# edited\n")
    assert build.build(options).written == [kickstart_name, "manifest.json"]
    assert events == ["stats waited for", "renderer made"]
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)


def test_an_interrupted_rebuild_reaps_its_child(
        monkeypatch: pytest.MonkeyPatch, recorded_build: tuple[Path, Path]) -> None:
    """Ctrl-C while the site loads: `ksbuild build` exits 130 and leaves no child behind."""
    from builder import cli

    site_path, out = recorded_build
    site_path.write_text(site_path.read_text() + "\n")
    monkeypatch.setattr(build, "_stats_answer", sleeps)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt
    monkeypatch.setattr(build, "check_inputs", interrupted)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert cli.main(["build", str(site_path), "-o", str(out)]) == 130
    assert len(Recorded.children) == 1 and reaped(Recorded.children[0])


def test_a_build_with_other_times_forks_no_child(
        monkeypatch: pytest.MonkeyPatch, recorded_build: tuple[Path, Path]) -> None:
    """Another SOURCE_DATE_EPOCH: no output is taken as it is (intact_outputs), none stat'ed."""
    site_path, out = recorded_build
    build.build(build.Options(site=site_path, out=out, source_date_epoch=1700000001))
    assert Recorded.children == []
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000002")
    build.build(build.Options(site=site_path, out=out))
    assert Recorded.children == []


def test_debris_of_a_write_killed_in_the_live_tree_never_becomes_an_output(
        tmp_path: Path) -> None:
    """`ksbuild serve` switches a host's boot entries in the live tree by writing each to a
    temporary `.<name>.<random>.part` and renaming it (output.write_bytes). Killed between the
    two, it leaves the temporary file in that generation, which a later build takes back as
    its spare: the file is removed there, never listed in the manifest, and the outputs stay
    a clean build's."""
    site_path = media_site(tmp_path, "none")
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    debris = (out / "pxe" / "tftp" / "pxelinux.cfg").resolve() / ".01-52-54-00-00-00-01.x1y2.part"
    debris.write_bytes(b"half an entry")
    doc = yaml.safe_load(site_path.read_text())
    for number, timezone in enumerate(("Europe/Berlin", "Europe/Paris", "Europe/Rome")):
        doc["hosts"][0]["timezone"] = timezone  # each build takes the one before last's tree
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        build.build(options)
        listed = [e["path"] for e in manifest.read(out)["outputs"]]
        assert not [name for name in listed if name.endswith(".part")], number
    assert list(out.glob(".ksbuild/.current.*.v.spare")), "no spare: the test cannot fail"
    assert not list((out / "pxe").resolve().rglob("*.part"))
    clean = tmp_path / "clean"
    build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
    assert tree_bytes(out) == tree_bytes(clean)
