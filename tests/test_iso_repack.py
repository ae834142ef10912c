"""`ksbuild iso`: what the repacked ISO holds, reproducibility, atomic output, and the one-line
errors for bases and options it refuses."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pty
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pycdlib
import pytest

from builder import output
from builder import site as sitemodel
from builder.errors import InputError
from builder.media import baseiso, iso, isofs, isomd5
from builder.run import run
from tests.fixtures import centos_iso, sgdisk_problems
from tests.fixtures.tree import escape_label, write_tree
from tests.test_iso_support import (
    ONE_HOST,
    REPO,
    blkid_label,
    efiboot_grub_cfg,
    extract,
    ksbuild,
    write_site,
)

HOSTS = [{"hostname": "kvm1.example.com", "mac": "52:54:00:00:00:01"},
         {"hostname": "kvm2.example.com", "mac": "52:54:00:00:00:02"}]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(done: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ksbuild: "), done.stderr
    assert re.search(pattern, lines[0]), lines[0]


def no_leftovers(output: Path) -> None:
    """Neither the output nor a temporary file beside it."""
    assert not output.exists()
    assert [p.name for p in output.parent.iterdir() if p.name.endswith(".part")] == []


# --- what the ISO holds ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repacked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(site, base, output) of one `ksbuild iso` run with a new volume ID."""
    folder = tmp_path_factory.mktemp("repack")
    site = write_site(folder, ONE_HOST)
    out = folder / "out.iso"
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", out, "--volid", "KVM HOSTS 7",
                   "--timeout", "3")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and "media MD5" in done.stderr
    return site, centos_iso(), out


def rendered_kickstart(site: Path) -> bytes:
    from builder import kickstart
    from builder import site as site_module

    (text,) = kickstart.render_site(site_module.load(site)).values()
    return text.encode()


def test_kickstart_under_all_three_names(repacked: tuple[Path, Path, Path]) -> None:
    site, _base, out = repacked
    expected = rendered_kickstart(site)
    image = pycdlib.PyCdlib()
    image.open(str(out))
    try:
        for where in ({"iso_path": "/KS.CFG;1"}, {"rr_path": "/ks.cfg"},
                      {"joliet_path": "/ks.cfg"}):
            data = io.BytesIO()
            image.get_file_from_iso_fp(data, **where)
            assert data.getvalue() == expected, where
    finally:
        image.close()
    assert extract(out, "/ks.cfg") == expected


def test_all_three_menus_carry_the_kickstart(repacked: tuple[Path, Path, Path]) -> None:
    _site, _base, out = repacked
    ks = f"inst.ks=hd:LABEL={escape_label('KVM HOSTS 7')}:/ks.cfg"
    isolinux = extract(out, "/isolinux/isolinux.cfg").decode()
    assert isolinux.count(ks) == 3 and "timeout 30" in isolinux
    for grub in (extract(out, "/EFI/BOOT/grub.cfg").decode(),
                 efiboot_grub_cfg(out).decode()):  # the copy inside efiboot.img, via mtools
        assert grub.count(ks) == 3
        assert "set timeout=3" in grub and 'set default="0"' in grub
        assert "search --no-floppy --set=root -l 'KVM HOSTS 7'" in grub
        assert "CentOS\\x207" not in grub


def test_media_checksum_passes(repacked: tuple[Path, Path, Path]) -> None:
    _site, _base, out = repacked
    done = run(["checkisomd5", out], check=False)
    assert done.returncode == 0 and b"PASS" in done.stdout + done.stderr
    assert isomd5.check(out)


def test_volume_id_everywhere(repacked: tuple[Path, Path, Path]) -> None:
    _site, base, out = repacked
    assert blkid_label(base) == "CentOS 7 x86_64"
    assert blkid_label(out) == "KVM HOSTS 7"
    image = pycdlib.PyCdlib()
    image.open(str(out))
    try:
        assert image.pvd.volume_identifier.rstrip() == b"KVM HOSTS 7"
        assert image.joliet_vd.volume_identifier.decode("utf-16-be").rstrip() == "KVM HOSTS 7"
    finally:
        image.close()


def test_everything_else_is_unchanged(repacked: tuple[Path, Path, Path]) -> None:
    _site, base, out = repacked
    for path in ("/isolinux/vmlinuz", "/isolinux/initrd.img", "/LiveOS/squashfs.img",
                 "/.treeinfo", "/images/pxeboot/vmlinuz", "/EFI/BOOT/BOOTX64.EFI"):
        assert extract(out, path) == extract(base, path), path


def test_volume_id_with_odd_characters(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    volid = "KVM (7)&x y#+.="
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "o.iso",
                   "--volid", volid)
    assert done.returncode == 0, done.stderr
    assert blkid_label(tmp_path / "o.iso") == volid
    isolinux = extract(tmp_path / "o.iso", "/isolinux/isolinux.cfg").decode()
    assert f"inst.ks=hd:LABEL={escape_label(volid)}:/ks.cfg" in isolinux
    assert f"inst.stage2=hd:LABEL={escape_label(volid)} " in isolinux


# --- reproducible ------------------------------------------------------------------------------


def test_same_bytes_in_any_time_zone_and_locale(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    outs = []
    for n, (tz, lang) in enumerate([("UTC", "C"), ("Pacific/Kiritimati", "C.UTF-8"),
                                    ("America/Los_Angeles", "C")]):
        out = tmp_path / f"{n}.iso"
        done = ksbuild("iso", site, "--base", centos_iso(), "-o", out,
                       env={"TZ": tz, "LC_ALL": lang, "SOURCE_DATE_EPOCH": "1700000000"})
        assert done.returncode == 0, done.stderr
        outs.append(sha256(out))
        time.sleep(1.1)  # a different wall clock for each run
    assert len(set(outs)) == 1
    other = tmp_path / "other.iso"
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", other,
                   env={"SOURCE_DATE_EPOCH": "1700000001"})
    assert done.returncode == 0 and sha256(other) != outs[0]  # the epoch does reach the bytes


def test_templates_kept_compiled_in_the_user_cache_change_no_byte(tmp_path: Path) -> None:
    """`ksbuild iso` keeps the compiled templates in $XDG_CACHE_HOME/ksbuild/templates: the
    same ISO whether they are written, read, damaged, or cannot be kept (the cache is a
    file), and the same ISO as without any cache at all (the library call)."""
    site = write_site(tmp_path, ONE_HOST)
    cache = tmp_path / "cache"
    compiled = cache / "ksbuild" / "templates"
    iso.build_site_iso(sitemodel.load(site), centos_iso(), tmp_path / "library.iso",
                       epoch=1700000000)
    outs = []
    for n, xdg in enumerate([cache, cache, cache, tmp_path / "site.yaml"]):
        if n == 2:
            for file in compiled.glob("*/*.jinja"):
                file.write_bytes(file.read_bytes()[:40])
        out = tmp_path / f"{n}.iso"
        done = ksbuild("iso", site, "--base", centos_iso(), "-o", out,
                       env={"XDG_CACHE_HOME": str(xdg), "SOURCE_DATE_EPOCH": "1700000000"})
        assert done.returncode == 0, done.stderr
        outs.append(sha256(out))
        if n == 0:
            kept = list(compiled.glob("*/*.jinja"))
            assert len(kept) == 10, kept
    assert outs == [sha256(tmp_path / "library.iso")] * 4


def test_a_repack_from_a_given_base_imports_only_what_it_uses(tmp_path: Path) -> None:
    """The import discipline of `ksbuild build` (tests/test_build.py), for `ksbuild iso
    --base`: not the downloader (builder.media.fetch: where the template cache is, is
    builder.cachedir's), nor the build's or the PXE tree's code, nor process pools."""
    from tests.test_build import among, imports_of

    site = write_site(tmp_path, ONE_HOST)
    done, names = imports_of("iso", str(site), "--base", str(centos_iso()), "-o",
                             str(tmp_path / "o.iso"), env={})
    assert done.returncode == 0, done.stderr
    assert {"jinja2", "pykickstart.parser", "pycdlib", "builder.cachedir"} <= names
    assert among(names, ("builder.media.fetch", "requests", "socket", "builder.build",
                         "builder.pxe.tree", "multiprocessing", "concurrent.futures",
                         "subprocess", "ctypes")) == []


def test_without_source_date_epoch_the_base_date_is_used(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    first, second = tmp_path / "a.iso", tmp_path / "b.iso"
    for out, tz in ((first, "UTC"), (second, "Asia/Shanghai")):
        done = ksbuild("iso", site, "--base", centos_iso(), "-o", out, env={"TZ": tz},
                       unset=("SOURCE_DATE_EPOCH",))
        assert done.returncode == 0, done.stderr
        time.sleep(1.1)
    assert sha256(first) == sha256(second)


def test_frozen_clock_is_what_makes_it_reproducible(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: with the clock left running, two repacks a second apart differ."""
    options = iso.RepackOptions(payload=iso.fixed(b"reboot\n"), epoch=1_700_000_000)
    iso.repack(centos_iso(), tmp_path / "a.iso", options)
    time.sleep(1.1)
    iso.repack(centos_iso(), tmp_path / "b.iso", options)
    assert sha256(tmp_path / "a.iso") == sha256(tmp_path / "b.iso")
    monkeypatch.setattr(iso, "frozen_clock", lambda epoch: contextlib.nullcontext())
    iso.repack(centos_iso(), tmp_path / "c.iso", options)
    time.sleep(1.1)
    iso.repack(centos_iso(), tmp_path / "d.iso", options)
    assert sha256(tmp_path / "c.iso") != sha256(tmp_path / "d.iso")


def test_output_mode_follows_the_umask(tmp_path: Path) -> None:
    """The ISO carries password hashes: under umask 077 it is the user's alone (issue 11
    item 15)."""
    site = write_site(tmp_path, ONE_HOST)
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "o.iso",
                   preexec=lambda: os.umask(0o077))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o.iso").stat().st_mode & 0o777 == 0o600


def test_output_that_is_the_base_or_a_folder_is_refused_before_any_work(
        tmp_path: Path) -> None:
    """-o naming the base (another name, same inode) would replace it; -o naming a folder
    must fail before the image is written (issue 11 item 7)."""
    site = write_site(tmp_path, ONE_HOST)
    base = tmp_path / "base.iso"
    shutil.copyfile(centos_iso(), base)
    os.link(base, tmp_path / "same.iso")
    before = sha256(base)
    done = ksbuild("iso", site, "--base", base, "-o", tmp_path / "same.iso")
    assert done.returncode == 2 and "is the base ISO" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and sha256(base) == before
    (tmp_path / "folder").mkdir()
    done = ksbuild("iso", site, "--base", base, "-o", tmp_path / "folder")
    assert done.returncode == 2 and "is a folder" in done.stderr, done.stderr
    assert list((tmp_path / "folder").iterdir()) == []


# --- atomic ------------------------------------------------------------------------------------


def _file_size_limit() -> None:  # runs in the child: a "disk" that fills up at 8 MiB
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))


def test_full_disk_leaves_no_partial_iso(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "old.iso").write_bytes(b"the previous build")
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", out_dir / "old.iso",
                   preexec=_file_size_limit)
    assert done.returncode == 1, done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert (out_dir / "old.iso").read_bytes() == b"the previous build"
    assert [p.name for p in out_dir.iterdir()] == ["old.iso"]


def test_interrupt_while_writing_leaves_nothing(tmp_path: Path) -> None:
    class Interrupting:
        def note(self, text: str) -> None:
            pass

        def start(self, name: str, total: int | None, done: int = 0) -> None:
            pass

        def advance(self, done: int) -> None:
            if done > 4 << 20:
                raise KeyboardInterrupt

        def finish(self, ok: bool = True) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        iso.repack(centos_iso(), tmp_path / "o.iso",
                   iso.RepackOptions(payload=iso.fixed(b"reboot\n")), Interrupting())
    no_leftovers(tmp_path / "o.iso")


def test_a_rebuild_swaps_the_new_iso_in_and_removes_the_old(tmp_path: Path) -> None:
    """Over an existing ISO the new one is swapped in (renameat2 RENAME_EXCHANGE: a rename
    over a file makes ext4 start writing back the whole new file, 0.8 s per GiB) and the old
    one removed after: a reader that has the old one open keeps its bytes, nothing is left
    beside the output; a symlink in the output's place is replaced, as a rename would."""
    swap = [tmp_path / "a", tmp_path / "b"]
    swap[0].write_bytes(b"a")
    swap[1].write_bytes(b"b")
    assert output._exchange(swap[0], swap[1])  # this file system can
    assert [p.read_bytes() for p in swap] == [b"b", b"a"]
    assert not output._exchange(tmp_path / "missing", swap[0])
    for path in swap:
        path.unlink()
    site = write_site(tmp_path, ONE_HOST)
    out = tmp_path / "out.iso"
    out.write_bytes(b"the previous build")
    with out.open("rb") as reader:
        done = ksbuild("iso", site, "--base", centos_iso(), "-o", out)
        assert done.returncode == 0, done.stderr
        assert reader.read() == b"the previous build"
        assert os.fstat(reader.fileno()).st_nlink == 0  # removed, not left under a temp name
    assert isomd5.check(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.iso", "site.yaml"]
    new = out.read_bytes()
    link = tmp_path / "link.iso"
    link.symlink_to("out.iso")
    with output.atomic_file(link, exchange=True) as temp:
        temp.write_bytes(b"replaces the link")
    assert not link.is_symlink() and link.read_bytes() == b"replaces the link"
    assert out.read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.iso", "out.iso", "site.yaml"]


# --- refused bases and options -----------------------------------------------------------------


def plain_iso(folder: Path, files: dict[str, str]) -> Path:
    tree = folder / "tree"
    for name, text in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    out = folder / "plain.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", out, "-V", "PLAIN", tree])
    return out


def test_not_an_iso(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 2000)
    for base, why in ((text, "not an ISO 9660 image"), (tmp_path, "is a folder"),
                      (tmp_path / "missing.iso", "no such file")):
        one_line_error(ksbuild("iso", site, "--base", base, "-o", tmp_path / "o.iso"), why)
    no_leftovers(tmp_path / "o.iso")


def test_truncated_base_is_one_line(tmp_path: Path) -> None:
    """An interrupted download: pycdlib failed with a struct.error traceback, exit 1."""
    site = write_site(tmp_path, ONE_HOST)
    whole = centos_iso().read_bytes()
    for cut in (1 << 20, len(whole) // 3, len(whole) - 2048):
        base = tmp_path / f"cut-{cut}.iso"
        base.write_bytes(whole[:cut])
        one_line_error(ksbuild("iso", site, "--base", base, "-o", tmp_path / "o.iso"),
                       rf"{re.escape(str(base))}: truncated: the image is {cut} bytes, its "
                       rf"volume descriptor says \d+ ")
        one_line_error(ksbuild("pxe", site, "--base", base, "-o", tmp_path / "pxe",
                               "--server", "http://127.0.0.1:8080"),
                       rf"{re.escape(str(base))}: truncated")
    no_leftovers(tmp_path / "o.iso")
    assert not (tmp_path / "pxe").exists()


@pytest.mark.parametrize("command", ["iso", "pxe"])
def test_fifo_or_device_as_base_is_refused_without_blocking(tmp_path: Path,
                                                            command: str) -> None:
    """Opening a FIFO for reading waits for a writer: the build hung for good."""
    site = write_site(tmp_path, ONE_HOST)
    fifo = tmp_path / "base.iso"
    os.mkfifo(fifo)
    for base in (fifo, Path("/dev/zero")):
        try:
            server = ("--server", "http://127.0.0.1:8080") if command == "pxe" else ()
            done = ksbuild(command, site, "--base", base, "-o", tmp_path / "out", *server,
                           timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ksbuild {command} blocked on {base}")
        one_line_error(done, rf"{re.escape(str(base))}: is not a regular file, not an ISO image")
    assert not (tmp_path / "out").exists()


def test_not_a_centos_7_boot_medium(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    cases = [
        ({"readme": "x"}, r"not a CentOS 7 install medium \(no \.discinfo or \.treeinfo\)"),
        ({".treeinfo": "[general]\nfamily = Fedora\nversion = 39\n"}, r"Fedora 39, not CentOS 7"),
        ({".discinfo": "1.0\n8.5\nx86_64\n"}, "release 8.5, not CentOS 7"),
        ({".discinfo": "1.0\n7.9\nx86_64\n"}, r"not a boot medium \(no El Torito"),
    ]
    for n, (files, why) in enumerate(cases):
        folder = tmp_path / str(n)
        folder.mkdir()
        base = plain_iso(folder, files)
        one_line_error(ksbuild("iso", site, "--base", base, "-o", folder / "o.iso"), why)
        no_leftovers(folder / "o.iso")


def test_boot_medium_without_menus(tmp_path: Path) -> None:
    """An El Torito ISO of CentOS 7 without isolinux.cfg: refused, naming the file."""
    tree = tmp_path / "tree"
    (tree / "isolinux").mkdir(parents=True)
    shutil.copyfile("/usr/lib/ISOLINUX/isolinux.bin", tree / "isolinux" / "isolinux.bin")
    (tree / ".discinfo").write_text("1.0\n7.9\nx86_64\n")
    base = tmp_path / "b.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", base, "-b",
         "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
         "-boot-load-size", "4", "-boot-info-table", tree])
    site = write_site(tmp_path, ONE_HOST)
    one_line_error(ksbuild("iso", site, "--base", base, "-o", tmp_path / "o.iso"),
                   r"not a CentOS 7 boot medium \(no isolinux/isolinux.cfg\)")


@pytest.mark.parametrize(("flavor", "why"), [
    ("Minimal", r"a Minimal ISO lacks @\^virtualization-host-environment, which host "
                r"kvm1.example.com installs with `source: cdrom`; use the DVD or Everything"),
    ("NetInstall", r"a NetInstall ISO carries no packages, and host kvm1.example.com has "
                   r"`source: cdrom`"),
])
def test_cdrom_site_refuses_minimal_and_netinstall(tmp_path: Path, flavor: str,
                                                   why: str) -> None:
    cdrom = write_site(tmp_path, ONE_HOST, source="cdrom")
    one_line_error(ksbuild("iso", cdrom, "--base", centos_iso(flavor=flavor),
                           "-o", tmp_path / "o.iso"), why)
    no_leftovers(tmp_path / "o.iso")


@pytest.mark.parametrize("flavor", ["DVD", "Everything"])
def test_cdrom_site_accepts_dvd_and_everything(tmp_path: Path, flavor: str) -> None:
    cdrom = write_site(tmp_path, ONE_HOST, source="cdrom")
    done = ksbuild("iso", cdrom, "--base", centos_iso(flavor=flavor), "-o", tmp_path / "o.iso")
    assert done.returncode == 0, done.stderr
    assert "base DVD/Everything 7.9" in done.stderr


def test_url_site_accepts_minimal(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    done = ksbuild("iso", site, "--base", centos_iso(flavor="Minimal"), "-o", tmp_path / "o.iso")
    assert done.returncode == 0, done.stderr
    assert "base Minimal 7.9" in done.stderr


@pytest.mark.parametrize(("args", "why"), [
    (["--volid", "x" * 17], "longer than 16 characters"),
    (["--volid", "a:b"], "separates the path"),
    (["--timeout", "-1"], "--timeout -1"),
    (["--host", "nobody.example.com"], "no host named 'nobody.example.com'"),
])
def test_bad_options(tmp_path: Path, args: list[str], why: str) -> None:
    site = write_site(tmp_path, ONE_HOST)
    one_line_error(ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "o.iso", *args),
                   why)
    no_leftovers(tmp_path / "o.iso")


def test_kickstart_naming_another_label_is_refused() -> None:
    from builder.media.kickstarts import check_source_labels

    check_source_labels("harddrive --partition=LABEL=KVM\\x20HOSTS --dir=/\n", "KVM HOSTS", "a")
    check_source_labels("cdrom\n# LABEL=ELSEWHERE\n", "KVM HOSTS", "a")  # no label: fine
    with pytest.raises(InputError, match=r"a.cfg:2: the install source names "
                                         r"LABEL=CentOS\\x207\\x20x86_64 but the ISO's volume "
                                         r"ID is 'KVM HOSTS'"):
        check_source_labels("install\nharddrive --partition=LABEL=CentOS\\x207\\x20x86_64 "
                            "--dir=/\n", "KVM HOSTS", "a.cfg")


# --- overlays ----------------------------------------------------------------------------------


def test_overlay_files_land_at_their_paths(tmp_path: Path) -> None:
    overlay = tmp_path / "overlays" / "iso"
    (overlay / "extras" / "deep.folder").mkdir(parents=True)
    (overlay / "extras" / "deep.folder" / "Post-Install.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(overlay / "extras" / "deep.folder" / "Post-Install.sh", 0o755)
    (overlay / "isolinux").mkdir()
    (overlay / "isolinux" / "boot.msg").write_text("ksbuild was here\n")
    (overlay / "a-very-long-name-for-iso9660.txt").write_text("long\n")
    site = write_site(tmp_path, ONE_HOST, overlays="overlays")
    out = tmp_path / "o.iso"
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", out)
    assert done.returncode == 0, done.stderr
    assert extract(out, "/extras/deep.folder/Post-Install.sh") == b"#!/bin/sh\necho hi\n"
    assert extract(out, "/isolinux/boot.msg") == b"ksbuild was here\n"
    assert extract(out, "/a-very-long-name-for-iso9660.txt") == b"long\n"
    listing = run(["xorriso", "-indev", out, "-find", "/extras", "-exec", "lsdl"]).stdout
    assert re.search(rb"^-r-xr-xr-x .*Post-Install\.sh'?$", listing, re.M), listing
    image = pycdlib.PyCdlib()
    image.open(str(out))
    try:  # the new ISO 9660 names are valid level-1 names
        for _path, dirs, files in image.walk(iso_path="/"):
            for name in dirs + files:
                assert re.fullmatch(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{0,3})?(;1)?", name), name
    finally:
        image.close()
    assert isomd5.check(out)


def test_overlay_cannot_replace_the_kickstart(tmp_path: Path) -> None:
    (tmp_path / "overlays" / "iso").mkdir(parents=True)
    (tmp_path / "overlays" / "iso" / "ks.cfg").write_text("mine\n")
    site = write_site(tmp_path, ONE_HOST, overlays="overlays")
    one_line_error(ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "o.iso"),
                   "ks.cfg is the kickstart ksbuild writes")


@pytest.mark.parametrize("kind", ["symlinked folder", "symlinked file", "fifo"])
def test_iso_overlay_takes_only_regular_files_and_folders(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY\n")
    (tmp_path / "overlays").mkdir()
    iso_folder = tmp_path / "overlays" / "iso"
    if kind == "symlinked folder":
        iso_folder.symlink_to(outside)
        bad, why = iso_folder, "symbolic links are not supported in overlays"
    else:
        iso_folder.mkdir()
        bad = iso_folder / "extra"
        if kind == "fifo":
            os.mkfifo(bad)
            why = "not a regular file or folder"
        else:
            bad.symlink_to(outside / "id_rsa")
            why = "symbolic links are not supported in overlays"
    site = write_site(tmp_path, ONE_HOST, overlays="overlays")
    try:
        done = ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "o.iso", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("ksbuild iso blocked on a FIFO in overlays/iso")
    one_line_error(done, rf"{re.escape(str(bad))}: {why}")
    no_leftovers(tmp_path / "o.iso")


# --- several hosts -----------------------------------------------------------------------------


def test_per_host_iso_carries_one_kickstart(tmp_path: Path) -> None:
    site = write_site(tmp_path, HOSTS)
    out = tmp_path / "kvm2.iso"
    done = ksbuild("iso", site, "--base", centos_iso(), "--host", "kvm2.example.com", "-o", out)
    assert done.returncode == 0, done.stderr
    ks = extract(out, "/ks.cfg").decode()
    assert "kvm2.example.com" in ks and "kvm1.example.com" not in ks


def test_per_site_iso_without_macs_is_refused(tmp_path: Path) -> None:
    site = write_site(tmp_path, [{"hostname": "a.example.com"}, {"hostname": "b.example.com"}])
    one_line_error(ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "o.iso"),
                   "none of the site's hosts has a `mac`")


@pytest.fixture(scope="module")
def per_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("per-site")
    site = write_site(folder, HOSTS + [{"hostname": "nomac.example.com"}])
    out = folder / "site.iso"
    done = ksbuild("iso", site, "--base", centos_iso(), "-o", out)
    assert done.returncode == 0, done.stderr
    return site, out


def test_per_site_iso_holds_every_host(per_site: tuple[Path, Path]) -> None:
    from builder import kickstart
    from builder import site as site_module

    site, out = per_site
    rendered = kickstart.render_site(site_module.load(site))
    for name, text in rendered.items():
        assert extract(out, f"/ks/{name}.cfg") == text.encode()
    dispatcher = extract(out, "/ks.cfg").decode()
    assert "%include /tmp/ksbuild-host.cfg" in dispatcher
    kickstart.Validator().validate(dispatcher, "ks.cfg")  # pykickstart (RHEL7) accepts it


def run_pick(dispatcher: str, folder: Path, macs: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the dispatcher's %pre with a fake sysfs and the extracted ks/ folder as media."""
    script = dispatcher.split("%pre --erroronfail --log=/tmp/ksbuild-pick.log\n", 1)[1]
    script = script.split("\n%end", 1)[0].replace("/tmp/ksbuild-host.cfg",
                                                  str(folder / "picked.cfg"))
    sysfs = folder / "sys"
    shutil.rmtree(sysfs, ignore_errors=True)
    for n, mac in enumerate(macs):
        (sysfs / "class" / "net" / f"eth{n}").mkdir(parents=True)
        (sysfs / "class" / "net" / f"eth{n}" / "address").write_text(mac + "\n")
    (folder / "picked.cfg").unlink(missing_ok=True)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "KSBUILD_SYSFS": str(sysfs),
                               "KSBUILD_MEDIA": str(folder / "media")})


def test_dispatcher_picks_by_mac(per_site: tuple[Path, Path], tmp_path: Path) -> None:
    _site, out = per_site
    dispatcher = extract(out, "/ks.cfg").decode()
    for name in ("kvm1.example.com", "kvm2.example.com", "nomac.example.com"):
        (tmp_path / "media" / "ks").mkdir(parents=True, exist_ok=True)
        (tmp_path / "media" / "ks" / f"{name}.cfg").write_bytes(extract(out, f"/ks/{name}.cfg"))
    done = run_pick(dispatcher, tmp_path, ["02:00:00:00:00:99", "52:54:00:00:00:02"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "picked.cfg").read_bytes() == extract(out, "/ks/kvm2.example.com.cfg")
    done = run_pick(dispatcher, tmp_path, ["52:54:00:00:00:01"])
    assert (tmp_path / "picked.cfg").read_bytes() == extract(out, "/ks/kvm1.example.com.cfg")
    done = run_pick(dispatcher, tmp_path, ["52:54:00:00:00:03"])  # unknown: stop, say why
    assert done.returncode == 1 and not (tmp_path / "picked.cfg").exists()
    assert "no kickstart on this ISO for the MAC(s): 52:54:00:00:00:03" in done.stderr
    assert "kvm1.example.com=52:54:00:00:00:01" in done.stderr


def test_the_hash_follows_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The media MD5 is taken while the image is written: no second pass over it."""
    def second_pass(*args: object) -> None:
        raise AssertionError("the image was read again to hash it")

    monkeypatch.setattr(isomd5, "digest_file", second_pass)
    iso.repack(centos_iso(), tmp_path / "o.iso", iso.RepackOptions(payload=iso.fixed(b"x\n")))
    done = run(["checkisomd5", tmp_path / "o.iso"], check=False)
    assert done.returncode == 0 and b"PASS" in done.stdout + done.stderr


def test_repacking_a_repacked_iso(tmp_path: Path) -> None:
    """A second repack replaces what the first added: one inst.ks per entry, one ks.cfg."""
    first_site = write_site(tmp_path, ONE_HOST)
    first = tmp_path / "first.iso"
    assert ksbuild("iso", first_site, "--base", centos_iso(), "-o", first,
                   "--volid", "FIRST").returncode == 0
    second_folder = tmp_path / "second"
    second_folder.mkdir()
    second_site = write_site(second_folder, [{"hostname": "other.example.com"}])
    second = tmp_path / "second.iso"
    done = ksbuild("iso", second_site, "--base", first, "-o", second, "--volid", "SECOND")
    assert done.returncode == 0, done.stderr
    isolinux = extract(second, "/isolinux/isolinux.cfg").decode()
    appends = [line for line in isolinux.splitlines() if "inst.stage2=" in line]
    assert all(line.count("inst.ks=") <= 1 for line in appends)
    assert isolinux.count("inst.ks=hd:LABEL=SECOND:/ks.cfg") == 3 and "FIRST" not in isolinux
    assert "FIRST" not in efiboot_grub_cfg(second).decode()
    assert b"other.example.com" in extract(second, "/ks.cfg")
    assert isomd5.check(second) and sgdisk_problems(second) == []


def test_base_from_the_site_media_key(tmp_path: Path) -> None:
    """Without --base, the site's `media: {path: ...}` names the base."""
    shutil.copyfile(centos_iso(), tmp_path / "base.iso")
    site = write_site(tmp_path, ONE_HOST)
    site.write_text(site.read_text() + "media:\n  path: base.iso\n")
    done = ksbuild("iso", site, "-o", tmp_path / "o.iso")
    assert done.returncode == 0, done.stderr
    assert isomd5.check(tmp_path / "o.iso")
    (tmp_path / "bare").mkdir()
    bare = write_site(tmp_path / "bare", ONE_HOST)
    one_line_error(ksbuild("iso", bare, "-o", tmp_path / "x.iso"),
                   r"give --base ISO, or name the base media in the site file")


def test_thousands_of_files_whose_8_3_names_collide(tmp_path: Path) -> None:
    extra = {f"/ks/host{i:04d}.example.com.cfg": f"host {i}\n".encode() for i in range(1500)}
    out = tmp_path / "many.iso"
    iso.repack(centos_iso(), out, iso.RepackOptions(
        payload=lambda volid, flavor: iso.Payload(b"dispatcher\n", extra)))
    image = pycdlib.PyCdlib()
    image.open(str(out))
    try:
        names = [child.file_identifier().decode()
                 for child in image.list_children(iso_path="/KS")
                 if not (child.is_dot() or child.is_dotdot())]
        for i in (0, 777, 1499):
            data = io.BytesIO()
            image.get_file_from_iso_fp(data, rr_path=f"/ks/host{i:04d}.example.com.cfg")
            assert data.getvalue() == f"host {i}\n".encode()
    finally:
        image.close()
    assert len(names) == len(set(names)) == 1500
    assert all(re.fullmatch(r"[A-Z0-9_]{1,8}\.CFG;1", name) for name in names)
    assert isomd5.check(out)


def test_quick_read_answers_as_pycdlib_does(tmp_path: Path) -> None:
    """The Secure Boot check reads two files of the base without pycdlib's parse of the whole
    image (isofs.quick_read): the same bytes as pycdlib's Rock Ridge lookup, the same None for
    a folder or a missing file, and pycdlib's answer where the quick reader is unsure (no
    Rock Ridge, names long enough for a continuation area)."""
    extra = {f"/deep/Mixed.Case-{i}/file.name.with.dots-{i}.txt": f"{i}\n".encode()
             for i in range(40)}
    out = tmp_path / "many.iso"
    iso.repack(centos_iso(), out, iso.RepackOptions(
        payload=lambda volid, flavor: iso.Payload(b"ks\n", extra)))
    paths = ["/EFI/BOOT/BOOTX64.EFI", "/images/efiboot.img", "/ks.cfg", "/isolinux",
             "/deep/Mixed.Case-39/file.name.with.dots-39.txt", "/deep/mixed.case-39",
             "/no/such/file", "/EFI/BOOT/bootx64.efi"]
    image = pycdlib.PyCdlib()
    image.open(str(out))
    try:
        expected = {path: isofs.read(image, path) for path in paths}
    finally:
        image.close()
    assert expected["/EFI/BOOT/BOOTX64.EFI"] and expected[paths[4]] == b"39\n"
    with out.open("rb") as f:
        assert isofs.quick_read(f.fileno(), paths) == expected
    assert baseiso.read_base_files(out, paths) == expected

    tree = tmp_path / "tree"
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"first stage")
    (tree / ("a-long-name" * 20)).write_bytes(b"listed before EFI, in a continuation area")
    for rock_ridge in ("off", "on"):
        plain = tmp_path / f"rock-ridge-{rock_ridge}.iso"
        run(["xorriso", "-abort_on", "FATAL", "-rockridge", rock_ridge, "-joliet", "on",
             "-outdev", plain, "-map", tree, "/"])
        with plain.open("rb") as f:
            assert isofs.quick_read(f.fileno(), ["/EFI/BOOT/BOOTX64.EFI"]) is None
        assert baseiso.read_base_files(plain, ["/EFI/BOOT/BOOTX64.EFI"]) == {
            "/EFI/BOOT/BOOTX64.EFI": b"first stage"}


def test_runs_without_privileges(tmp_path: Path) -> None:
    """No mounts, loop devices or other privileges: as root, every capability is dropped
    first (setpriv), so mounting or attaching a loop device would fail."""
    site = write_site(tmp_path, ONE_HOST)
    out = tmp_path / "o.iso"
    argv = [sys.executable, "-m", "builder", "iso", str(site), "--base", str(centos_iso()),
            "-o", str(out)]
    if os.geteuid() == 0:
        argv = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all",
                *argv]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert isomd5.check(out)


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    site = write_site(tmp_path, ONE_HOST)
    quiet = ksbuild("iso", site, "--base", centos_iso(), "-o", tmp_path / "a.iso")
    assert quiet.returncode == 0 and len(quiet.stderr.splitlines()) == 1  # just "wrote ..."
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "builder", "iso", str(site), "--base",
                               str(centos_iso()), "-o", str(tmp_path / "b.iso")],
                              stdout=subprocess.DEVNULL, stderr=secondary, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(primary, 65536):
                shown += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0
    assert b"\r\x1b[Kwriting b.iso [" in shown and b"100%" in shown and b"wrote " in shown


def test_efiboot_without_room_is_a_clear_error(tmp_path: Path) -> None:
    """A base whose images/efiboot.img is full: the longer grub.cfg does not fit."""
    root = tmp_path / "root"
    dummy = tmp_path / "dummy"
    dummy.write_bytes(b"not a kernel\n")
    write_tree(root, "CentOS 7 x86_64", "DVD", vmlinuz=dummy, initrd=dummy, grub_efi=dummy)
    grub = root / "EFI" / "BOOT" / "grub.cfg"
    size = len(grub.read_bytes())
    grub.write_bytes(grub.read_bytes() + b"#" * ((500 - size) % 512) + b"\n")  # 11 bytes slack
    image = root / "images" / "efiboot.img"
    run(["mkfs.vfat", "--invariant", "-s", "1", "-n", "ANACONDA", "-C", image, "200"])
    run(["mcopy", "-s", "-i", image, root / "EFI", "::"])
    free = int(re.search(rb"([\d ]+) bytes free", run(["mdir", "-i", image, "::"]).stdout)
               .group(1).replace(b" ", b""))
    (tmp_path / "filler").write_bytes(b"\xaa" * free)  # not one cluster left
    run(["mcopy", "-i", image, tmp_path / "filler", "::filler"])
    base = tmp_path / "full.iso"
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", base, "-V", "CentOS 7 x86_64", "-R", "-J",
         "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
         "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot",
         "-e", "images/efiboot.img", "-no-emul-boot", root])
    site = write_site(tmp_path, ONE_HOST)
    one_line_error(ksbuild("iso", site, "--base", base, "-o", tmp_path / "o.iso"),
                   r"full.iso: images/efiboot.img: no room for the new EFI/BOOT/grub.cfg "
                   r"\(\d+ bytes\): it needs \d+ more cluster")
    no_leftovers(tmp_path / "o.iso")
