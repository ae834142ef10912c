"""`ksbuild boot`: try an install ISO in QEMU with a blank disk, like `mkosi qemu`.

The ISO is attached as a CD (IDE) or as a USB stick (EHCI), the firmware is SeaBIOS or OVMF
(UEFI, with a private copy of its variable store), and the blank disk is a sparse raw file on
SATA, so a kickstart that names `sda` finds it. Two stages, as on real hardware where the
stick is pulled after the install: the VM boots the ISO with the disk attached, and QEMU ends
when the installer reboots (-no-reboot; SeaBIOS tries only the first hard disk, so "disk
first, fall through to the stick" cannot be had); if the disk then holds a boot sector, a
second VM boots the installed system from it. With KVM (/dev/kvm usable) the guest runs at
full speed; without it QEMU emulates the CPU, and an install takes hours rather than minutes.

With secure_boot, the firmware is OVMF's Secure Boot build with Microsoft's keys enrolled, as
on PC hardware, so the user sees what such a machine does with the ISO's shim; dbx_hashes
revokes hashes in the private copy of the variable store first, as an updated dbx does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import InputError
from builder.run import run

# (code, variable store) pairs as distributions install them.
OVMF = (
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.fd", "/usr/share/edk2/x64/OVMF_VARS.fd"),
    ("/usr/share/edk2-ovmf/x64/OVMF_CODE.fd", "/usr/share/edk2-ovmf/x64/OVMF_VARS.fd"),
)
# Secure Boot: the code built with SMM and Secure Boot, and a store with Microsoft's keys
# enrolled (PK, KEK, db: what PC firmware ships with) and a dbx that revokes nothing.
OVMF_SECURE_BOOT = (
    ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
    ("/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"),
)
MICROSOFT_OWNER = "77fa9abd-0359-4d32-bd60-28f4e78f784b"  # the owner GUID of Microsoft's dbx
QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class BootOptions:
    iso: Path
    uefi: bool = False
    usb: bool = False
    disk: Path | None = None  # None: a blank disk in a temporary folder, removed afterwards
    disk_gib: int = 20
    memory_mib: int = 2048
    network: bool = True  # QEMU's user-mode NAT; False: no NIC at all
    console: bool = False  # the serial port on this terminal instead of a window
    kvm: bool | None = None  # None: when /dev/kvm is usable
    secure_boot: bool = False  # OVMF with Secure Boot on and Microsoft's keys (implies uefi)
    dbx_hashes: tuple[str, ...] = ()  # Authenticode SHA-256 hashes added to the store's dbx


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def find_ovmf(secure_boot: bool = False) -> tuple[Path, Path]:
    if secure_boot:
        for code, store in OVMF_SECURE_BOOT:
            if Path(code).is_file() and Path(store).is_file():
                return Path(code), Path(store)
        raise InputError("--secure-boot needs OVMF built with Secure Boot and a variable store "
                         "with Microsoft's keys (Debian/Ubuntu: apt-get install ovmf, which has "
                         "OVMF_CODE_4M.secboot.fd and OVMF_VARS_4M.ms.fd)")
    for code, store in OVMF:
        if Path(code).is_file() and Path(store).is_file():
            return Path(code), Path(store)
    raise InputError("--uefi needs OVMF (Debian/Ubuntu: apt-get install ovmf; Fedora: "
                     "edk2-ovmf); none of its usual files is installed")


def qemu_command(options: BootOptions, disk: Path, ovmf: tuple[Path, Path] | None,
                 installed: bool = False) -> list[str]:
    """The QEMU command line; `ovmf` is (code, private copy of the variable store).
    installed=False: the ISO boots, the disk is attached, a reboot ends QEMU; True: the disk
    alone boots."""
    kvm = kvm_usable() if options.kvm is None else options.kvm
    # Secure Boot OVMF keeps its variables safe in SMM: q35 with SMM, and a flash only SMM
    # code may write.
    machine = "q35,smm=on" if options.secure_boot else "pc"
    argv = [QEMU, "-machine", machine + (",accel=kvm" if kvm else ""), "-m",
            str(options.memory_mib), "-smp", "2"]
    if kvm:
        argv += ["-cpu", "host"]
    if options.secure_boot:
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    if ovmf is not None:
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={ovmf[0]}",
                 "-drive", f"if=pflash,format=raw,file={ovmf[1]}"]
    argv += ["-device", "ahci,id=sata",
             "-drive", f"if=none,id=disk,format=raw,file={disk}",
             "-device", f"ide-hd,drive=disk,bus=sata.0,bootindex={0 if installed else 1}"]
    iso = options.iso.resolve()
    if installed:
        pass
    elif options.usb:
        argv += ["-device", "usb-ehci,id=ehci",
                 "-drive", f"if=none,id=stick,format=raw,readonly=on,file={iso}",
                 "-device", "usb-storage,bus=ehci.0,drive=stick,bootindex=0", "-no-reboot"]
    else:
        argv += ["-drive", f"if=none,id=cd,media=cdrom,readonly=on,file={iso}",
                 "-device", "ide-cd,drive=cd,bus=ide.1,bootindex=0", "-no-reboot"]
    argv += ["-nic", "user,model=e1000"] if options.network else ["-nic", "none"]
    if options.console:
        argv += ["-nographic"]
    return argv


@contextlib.contextmanager
def _machine(options: BootOptions) -> Iterator[tuple[Path, tuple[Path, Path] | None]]:
    """A disk (the user's, or a fresh blank one) and, for UEFI, a private OVMF store."""
    ovmf = find_ovmf(options.secure_boot) if options.uefi or options.secure_boot else None
    with tempfile.TemporaryDirectory(prefix="ksbuild-boot-") as folder:
        disk = options.disk
        if disk is None:
            disk = Path(folder) / "disk.raw"
        if not disk.exists():
            with disk.open("wb") as blank:
                blank.truncate(options.disk_gib << 30)  # sparse: costs no space until written
        store = None
        if ovmf is not None:
            store = Path(folder) / "OVMF_VARS.fd"
            shutil.copyfile(ovmf[1], store)
            add_to_dbx(store, options.dbx_hashes)
        yield disk, (ovmf[0], store) if ovmf is not None and store is not None else None


def add_to_dbx(store: Path, hashes: tuple[str, ...]) -> None:
    """Revoke these Authenticode hashes in the store's dbx (virt-fw-vars, PyPI virt-firmware),
    as a firmware with an updated dbx would."""
    if not hashes:
        return
    # On PATH, or beside this Python (pip installed it into the same virtual environment).
    tool = shutil.which("virt-fw-vars") or shutil.which("virt-fw-vars",
                                                         path=os.path.dirname(sys.executable))
    if tool is None:
        raise InputError("--dbx-hash needs virt-fw-vars (pip install virt-firmware)")
    argv: list[str | Path] = [tool, "-i", store, "-o", store]
    for sha in hashes:
        if len(sha) != 64 or any(c not in "0123456789abcdefABCDEF" for c in sha):
            raise InputError(f"--dbx-hash {sha}: not a SHA-256 (64 hex digits)")
        argv += ["--add-dbx-hash", MICROSOFT_OWNER, sha.lower()]
    run(argv)


def has_boot_sector(disk: Path) -> bool:
    with disk.open("rb") as f:
        return f.read(512)[510:512] == b"\x55\xaa"


def boot(options: BootOptions, note: Callable[[str], None] = lambda text: None) -> int:
    """Install from the ISO, then boot the installed disk; QEMU's last exit code."""
    if not options.iso.is_file():
        raise InputError(f"{options.iso}: no such ISO")
    if options.kvm is None and not kvm_usable():
        note("no usable /dev/kvm: QEMU emulates the CPU, so the installer is very slow")
    with _machine(options) as (disk, ovmf):
        argv = qemu_command(options, disk, ovmf)
        note("running: " + " ".join(argv))
        code = run(argv, check=False, capture=False).returncode
        if code != 0 or not has_boot_sector(disk):
            return code
        note("the installer has rebooted: booting the installed disk")
        argv = qemu_command(options, disk, ovmf, installed=True)
        note("running: " + " ".join(argv))
        return run(argv, check=False, capture=False).returncode
