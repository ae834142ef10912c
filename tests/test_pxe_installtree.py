"""`pxe: {install_tree: local}`: the base DVD published as the install tree under http/, read
out of the image, verified as yum would, kept (hard-linked, not copied) on a rebuild.

The published files are compared with what xorriso itself extracts from the same ISO.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder import build as ksbuild_build
from builder.errors import InputError
from builder.pxe import installtree
from builder.run import run
from tests import sitefiles
from tests.conftest import REPO
from tests.fixtures import centos_iso
from tests.fixtures.tree import PACKAGES
from tests.pxe_support import GUEST_SERVER, HOSTS, build, write_site
from tests.sitefiles import site_doc

H1, MAC1, _ = HOSTS[0]
FOLDER = "centos/7.9.2009/os/x86_64"
URL = f"{GUEST_SERVER}/{FOLDER}/"
LOCAL = {"server": GUEST_SERVER, "install_tree": "local"}


def files_under(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def extracted(iso: Path, into: Path) -> Path:
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", into])
    return into


def test_the_dvd_is_published_whole_and_the_hosts_install_from_it(tmp_path: Path) -> None:
    iso = centos_iso()
    result = build(write_site(tmp_path, LOCAL), tmp_path / "pxe", base=iso)
    published = tmp_path / "pxe/http" / FOLDER
    reference = files_under(extracted(iso, tmp_path / "xorriso"))
    got = files_under(published)
    assert sorted(got) == sorted(reference)
    for name in (".treeinfo", ".discinfo", "repodata/repomd.xml", "images/pxeboot/initrd.img",
                 "LiveOS/squashfs.img", *(f"Packages/{p}" for p in PACKAGES)):
        assert name in got, name
    for name, path in got.items():
        assert path.read_bytes() == reference[name].read_bytes(), name
        assert path.stat().st_mode & 0o777 == 0o644, name
    info = result.install_tree
    assert info is not None and info.folder == FOLDER
    assert (info.files, info.copied, info.kept) == (len(got), len(got), 0)
    assert (info.packages, info.packages_hashed) == (len(PACKAGES), len(PACKAGES))
    # The installer's entries and the kickstarts point at the boot server's tree.
    for entry in (f"tftp/pxelinux.cfg/01-{MAC1.replace(':', '-')}",
                  f"tftp/grub.cfg-01-{MAC1.replace(':', '-')}",
                  f"tftp/ipxe/{MAC1.replace(':', '-')}.ipxe"):
        assert f"inst.repo={URL} " in (tmp_path / "pxe" / entry).read_text(), entry
    for name, _mac, _address in HOSTS:
        assert f"\nurl --url={URL}\n" in (tmp_path / f"pxe/http/ks/{name}.cfg").read_text()


def test_a_rebuild_copies_nothing_that_did_not_change(tmp_path: Path) -> None:
    site = write_site(tmp_path, LOCAL)
    iso = tmp_path / "dvd.iso"
    shutil.copyfile(centos_iso(), iso)
    build(site, tmp_path / "pxe", base=iso)
    package = tmp_path / "pxe/http" / FOLDER / "Packages" / PACKAGES[0]
    inode = package.stat().st_ino
    again = build(site, tmp_path / "pxe", base=iso).install_tree
    assert again is not None and again.copied == 0 and again.copied_bytes == 0
    assert again.kept == again.files
    assert package.stat().st_ino == inode  # the very same file, not a copy
    # A touched ISO (another download of it, say) is copied again: nothing is assumed.
    os.utime(iso)
    third = build(site, tmp_path / "pxe", base=iso).install_tree
    assert third is not None and third.copied == third.files


def corrupt(path: Path) -> None:
    """Flip one byte, keeping size and mtime (what a rebuild's quick check looks at)."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def ksbuild_pxe(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "pxe", str(tmp_path / "site.yaml"),
                           "--base", str(centos_iso()), "-o", str(tmp_path / "pxe")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_corrupted_package_or_repodata_file_is_reported(tmp_path: Path) -> None:
    build(write_site(tmp_path, LOCAL), tmp_path / "pxe", base=centos_iso())
    again = ksbuild_pxe(tmp_path)
    assert again.returncode == 0, again.stderr
    assert re.search(rf"install tree http/{FOLDER}/: ([0-9]+) files, .*; copied 0 \(0 MiB\), "
                     rf"kept \1; {len(PACKAGES)} packages verified by size, {len(PACKAGES)} by "
                     "checksum", again.stderr), again.stderr
    tree = tmp_path / "pxe/http" / FOLDER
    assert installtree.verify(tree) == (len(PACKAGES), len(PACKAGES))
    package = tree / "Packages" / PACKAGES[2]
    corrupt(package)
    with pytest.raises(InputError, match=f"Packages/{PACKAGES[2]}: sha256 [0-9a-f]+ does not "
                                         "match the metadata's"):
        installtree.verify(tree)
    # The rebuild keeps the file (same size and mtime) but verifies it: ksbuild pxe refuses,
    # one line, exit 2, and the tree in place is left as it was.
    done = ksbuild_pxe(tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"Packages/{PACKAGES[2]}: sha256" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    package.unlink()
    with pytest.raises(InputError, match=f"Packages/{PACKAGES[2]}: No such file"):
        installtree.verify(tree)


def test_repodata_is_verified_against_repomd(tmp_path: Path) -> None:
    build(write_site(tmp_path, LOCAL), tmp_path / "pxe", base=centos_iso())
    tree = tmp_path / "pxe/http" / FOLDER
    primary = next((tree / "repodata").glob("*-primary.xml.gz"))
    corrupt(primary)
    with pytest.raises(InputError, match=f"repodata/{primary.name}: sha256 .* does not match"):
        installtree.verify(tree)
    primary.unlink()
    with pytest.raises(InputError, match=f"repodata/{primary.name}: No such file"):
        installtree.verify(tree)


def test_only_a_sample_of_packages_is_hashed_unless_all_are_asked(tmp_path: Path) -> None:
    build(write_site(tmp_path, LOCAL), tmp_path / "pxe", base=centos_iso())
    tree = tmp_path / "pxe/http" / FOLDER
    assert installtree.verify(tree, sample=2) == (len(PACKAGES), 2)
    assert installtree.verify(tree, all_packages=True, sample=2) == (len(PACKAGES),
                                                                     len(PACKAGES))
    # Every package's size is checked even when not hashed.
    primary = next((tree / "repodata").glob("*-primary.xml.gz"))
    text = gzip.decompress(primary.read_bytes()).decode()
    assert text.count("<package ") == len(PACKAGES)
    (tree / "Packages" / PACKAGES[-1]).write_bytes(b"short\n")
    with pytest.raises(InputError, match=f"Packages/{PACKAGES[-1]}: 6 bytes"):
        installtree.verify(tree, sample=1)


@pytest.mark.parametrize("flavor", ["Minimal", "NetInstall"])
def test_a_base_without_the_hosts_packages_is_refused(tmp_path: Path, flavor: str) -> None:
    with pytest.raises(InputError) as caught:
        build(write_site(tmp_path, LOCAL), tmp_path / "pxe", base=centos_iso(flavor=flavor))
    message = str(caught.value)
    if flavor == "Minimal":
        assert "a Minimal ISO lacks @^virtualization-host-environment" in message
    else:
        assert "a NetInstall ISO carries no packages" in message
    assert "pxe.install_tree: local" in message and "use the DVD or Everything ISO" in message
    assert not (tmp_path / "pxe").exists()


def test_ksbuild_build_keeps_the_published_tree_when_a_host_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copyfile(centos_iso(), tmp_path / "base.iso")
    document = site_doc(media={"path": "base.iso"}, outputs={"iso": "none", "pxe": True},
                        pxe={"server": "http://10.1.0.5", "install_tree": "local"})
    site_path = sitefiles.write_site(tmp_path, document)
    options = ksbuild_build.Options(site=site_path, out=tmp_path / "out",
                                    source_date_epoch=1700000000)
    first = ksbuild_build.build(options)
    package = f"pxe/http/{FOLDER}/Packages/{PACKAGES[0]}"
    assert package in first.written
    inode = (tmp_path / "out" / package).stat().st_ino
    document["hosts"][1]["timezone"] = "Europe/Berlin"
    sitefiles.write_site(tmp_path, document)
    copied: list[str] = []
    copy_out = installtree._copy_out

    def counted(fd: int, item: installtree.IsoFile, target: Path) -> None:
        copied.append(item.path)
        copy_out(fd, item, target)

    monkeypatch.setattr(installtree, "_copy_out", counted)
    changed = ksbuild_build.build(options)
    assert copied == []  # the tree is rebuilt beside the old one, from its hard links
    assert "pxe/http/ks/kvm2.example.com.cfg" in changed.written
    assert not [p for p in changed.written if f"/{FOLDER}/" in p]
    assert (tmp_path / "out" / package).stat().st_ino == inode
    kickstart = (tmp_path / "out/pxe/http/ks/kvm2.example.com.cfg").read_text()
    assert f"\nurl --url=http://10.1.0.5/{FOLDER}/\n" in kickstart
