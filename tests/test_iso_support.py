"""Helpers the test_iso_* files share (no tests here): site files, a base ISO made the way real
CentOS media are (genisoimage-style options, then syslinux's `isohybrid --uefi`), running
ksbuild, and reading results with xorriso and mtools."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from builder.run import run
from tests.fixtures.iso import SOURCE_DATE_EPOCH, make_efiboot
from tests.fixtures.tree import write_tree

REPO = Path(__file__).resolve().parent.parent
# SHA-512 crypt of "changeme", as in the example site.
PASSWORD_HASH = ("$6$ksbuildexample$QjxFPRYKzPP5427c/UElsobtSR1I2HT8q//HWLvV5ohvqmL1n2TXss6FPP4"
                 "xC3vpLTPXIonQUOmaMzB7L1JAv1")


def write_site(folder: Path, hosts: list[dict[str, str]], source: str = "url",
               overlays: str | None = None) -> Path:
    """A site file with `hosts` ({hostname, mac?}); source "url" (the vault) or "cdrom"."""
    url = "https://vault.centos.org/7.9.2009/os/x86_64/"
    lines = ["defaults:", f"  root_password_hash: \"{PASSWORD_HASH}\"",
             f"  source: {url if source == 'url' else 'cdrom'}"]
    if overlays:
        lines.append(f"overlays: {overlays}")
    lines.append("hosts:")
    for host in hosts:
        lines.append(f"  - hostname: {host['hostname']}")
        if host.get("mac"):
            lines.append(f"    mac: \"{host['mac']}\"")
    path = folder / "site.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


ONE_HOST = [{"hostname": "kvm1.example.com", "mac": "52:54:00:12:34:56"}]


def ksbuild(*args: str | Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
            cwd: Path | None = None, preexec: object = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `python -m builder ARGS` as a user would (a separate process)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    for name in unset:
        full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "builder", *map(str, args)],
                          capture_output=True, text=True, env=full, cwd=cwd or REPO,
                          timeout=timeout, preexec_fn=preexec)  # type: ignore[arg-type]


PEAK_RSS = re.compile(r"^KSBUILD-PEAK-RSS-KIB (\d+)$", re.M)
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent
# (a pytest process grown to ~170 MiB by earlier tests), VmHWM belongs to this program alone.
_MEASURED = """
import re, sys
from builder.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status:
        peak = re.search(r"^VmHWM:\\s+(\\d+) kB", status.read(), re.M).group(1)
    print(f"KSBUILD-PEAK-RSS-KIB {peak}", file=sys.stderr)
sys.exit(code)
"""


def ksbuild_peak_rss(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ksbuild in a child process; also its own peak resident memory in KiB."""
    full = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)],
                          capture_output=True, text=True, env=full, cwd=REPO, timeout=900)
    found = PEAK_RSS.search(done.stderr)
    assert found, done.stderr
    return done, int(found.group(1))


def isohybrid_base(out: Path, volid: str = "CentOS 7 x86_64", flavor: str = "DVD",
                   padding: int = 0) -> Path:
    """A small CentOS-shaped ISO made as CentOS 7 media are: mkisofs-style El Torito, then
    syslinux's `isohybrid --uefi` (MBR + GPT), then implantisomd5. Not bootable to the end
    (dummy kernel): for layout tests. `padding`: bytes of zeros in one more file."""
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        dummy = work / "dummy"
        dummy.write_bytes(b"not a kernel\n" * 1000)
        root = work / "root"
        write_tree(root, volid, flavor, vmlinuz=dummy, initrd=dummy, grub_efi=dummy)
        make_efiboot(root / "EFI", root / "images" / "efiboot.img")
        if padding:
            with (root / "padding.bin").open("wb") as filler:
                filler.truncate(padding)
        run(["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-V", volid, "-R", "-J", "-T",
             "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
             "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot",
             "-e", "images/efiboot.img", "-no-emul-boot", root],
            env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "TZ": "UTC"})
    run(["isohybrid", "--uefi", "--id", "0x6acc9bba", out])
    run(["implantisomd5", out])
    if padding:
        run(["fallocate", "--dig-holes", out])
    return out


def extract(iso: Path, path: str) -> bytes:
    """A file of the ISO as Linux sees it (Rock Ridge names), read by xorriso."""
    with tempfile.TemporaryDirectory() as temp:
        target = Path(temp) / "file"
        run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", path, target])
        return target.read_bytes()


def efiboot_grub_cfg(iso: Path) -> bytes:
    """EFI/BOOT/grub.cfg inside the ISO's images/efiboot.img, read by mtools."""
    with tempfile.TemporaryDirectory() as temp:
        image = Path(temp) / "efiboot.img"
        image.write_bytes(extract(iso, "/images/efiboot.img"))
        return run(["mtype", "-i", image, "::EFI/BOOT/grub.cfg"]).stdout


def xorriso_report(iso: Path) -> list[str]:
    done = run(["xorriso", "-indev", iso, "-report_el_torito", "plain",
                "-report_system_area", "plain"], check=False)
    return [line for line in done.stdout.decode(errors="replace").splitlines()
            if line.startswith(("El Torito", "System area", "MBR", "GPT", "ISO image"))]


# Report lines whose numbers (LBAs, sizes) legitimately change in a repack.
MOVING = re.compile(r"^(El Torito catalog|El Torito boot img|ISO image size|MBR partition  |"
                    r"GPT lba range|GPT start and size|GPT array CRC)")


def boot_setup(iso: Path) -> list[str]:
    """The xorriso report with the numbers that move in a repack masked: what the boot setup
    is (platforms, emulation, load sizes, options, paths, partition types, GUIDs, flags)."""
    out = []
    for line in xorriso_report(iso):
        if MOVING.match(line):
            head, _, tail = line.partition(":")
            fields = tail.split()
            if line.startswith("El Torito boot img"):
                fields[-1] = "LBA"  # keep N, platform, bootable, emulation, segment, load size
            else:
                fields = [re.sub(r"^\d+$", "#", f) for f in fields]
            line = f"{head}: {' '.join(fields)}"
        out.append(line)
    return out


def blkid_label(iso: Path) -> str:
    done = run(["blkid", "-p", "-o", "value", "-s", "LABEL", iso])
    return done.stdout.decode().strip()
