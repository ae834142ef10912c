"""Shared parts of the PXE tests (tests/test_pxe*.py, tests/test_serve.py): site files, a small
base ISO, test GRUB images, local disks that report when they are booted, and a tree builder.

Everything built is cached like tests/fixtures (names carry a digest of what they are made of).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from builder import site
from builder.pxe import serve
from builder.pxe import state as pxestate
from builder.pxe import tree as pxe
from builder.run import run
from tests.fixtures.cache import cached_file, digest
from tests.fixtures.grub import CENTOS_MODULES, COMMON_MODULES, NET_MODULES, make_grub_efi
from tests.fixtures.iso import tool_versions

HERE = Path(__file__).resolve()
HASH = ("$6$ksbuildexample$QjxFPRYKzPP5427c/UElsobtSR1I2HT8q//HWLvV5ohvqmL1n2TXss6FPP4xC3"
        "vpLTPXIonQUOmaMzB7L1JAv1")
# (hostname, MAC, address): QEMU's user network gives the guest 10.0.2.15; that address only
# exists inside QEMU (and in kickstarts, which no test sends anywhere).
HOSTS = (("kvm01.example.com", "52:54:00:12:34:56", "10.0.2.15"),
         ("kvm02.example.com", "52:54:00:12:34:57", "10.0.2.16"))
UNKNOWN_MAC = "52:54:00:aa:bb:cc"
GUEST_SERVER = "http://10.0.2.100"  # QEMU's guestfwd address for a loopback server
LOCAL_MARKER = "KSBUILD-LOCAL-DISK"

# `exit` (minicmd) and `chainloader` (chain) for local boot; CentOS's grubx64.efi has both.
GRUB_MODULES = COMMON_MODULES + NET_MODULES + ("minicmd",)
# The "CentOS-like" test GRUB has exactly CentOS 7.9's built-in modules, so a command CentOS's
# GRUB lacks (regexp...) fails here too, and its prefix: /EFI/centos on the TFTP server it came
# from, where the tree has nothing. Through an embedded config it reads the tree's grub.cfg
# first (as Red Hat's does for a MAC without grub.cfg-01-<mac>), so a boot with it goes through
# grub.cfg's own lookup by $net_default_mac. The "upstream" one has no linuxefi; both find the
# tree as ($root).
GRUB_KINDS = {
    "centos": (CENTOS_MODULES, "/EFI/centos", "configfile ($root)/grub.cfg\n"),
    "upstream": (tuple(m for m in GRUB_MODULES if m != "linuxefi"), "(tftp)/", None),
}


def host_dicts(hosts: tuple[tuple[str, str, str], ...] = HOSTS) -> list[dict[str, Any]]:
    return [{"hostname": name, "mac": mac,
             "bridge": {"slaves": ["eth0"], "address": f"{address}/24", "gateway": "10.0.2.2"}}
            for name, mac, address in hosts]


def write_site(folder: Path, pxe_key: dict[str, Any] | None,
               hosts: list[dict[str, Any]] | None = None, **top: Any) -> Path:
    document: dict[str, Any] = {
        "defaults": {"root_password_hash": HASH, "selinux": "disabled",
                     "firewall": {"enabled": False}, "source": f"{GUEST_SERVER}/os/"},
        "hosts": host_dicts() if hosts is None else hosts,
        **top,
    }
    if pxe_key is not None:
        document["pxe"] = pxe_key
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def grub_image(kind: str) -> Path:
    modules, prefix, early = GRUB_KINDS[kind]
    key = digest(HERE.read_bytes(), kind, tool_versions())
    return cached_file(f"pxe-grub-{kind}-{key}.efi", lambda out: make_grub_efi(
        out, prefix=prefix, early_config=early, modules=modules))


def small_base_iso() -> Path:
    """A real ISO 9660 image (Rock Ridge, Joliet) with the files a PXE tree takes from CentOS
    media: tiny stand-ins for the kernel and initrd, the CentOS-like GRUB as shim and GRUB."""
    grub = grub_image("centos")

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as temp:
            root = Path(temp)
            (root / "images/pxeboot").mkdir(parents=True)
            (root / "images/pxeboot/vmlinuz").write_bytes(b"test vmlinuz\n" * 1000)
            (root / "images/pxeboot/initrd.img").write_bytes(b"test initrd\n" * 5000)
            (root / "EFI/BOOT").mkdir(parents=True)
            shutil.copyfile(grub, root / "EFI/BOOT/BOOTX64.EFI")
            shutil.copyfile(grub, root / "EFI/BOOT/grubx64.efi")
            out.unlink()
            run(["xorriso", "-as", "mkisofs", "-quiet", "-o", out, "-V", "CentOS 7 x86_64",
                 "-R", "-J", root], env={"SOURCE_DATE_EPOCH": "1604413529", "TZ": "UTC"})

    return cached_file(f"pxe-small-base-{digest(HERE.read_bytes(), grub.name)}.iso", build)


def bios_local_disk() -> Path:
    """A disk whose boot sector writes LOCAL_MARKER to the first serial port, then ends QEMU
    through its isa-debug-exit device (BIOS_DISK_ARGS)."""
    def build(out: Path) -> None:
        message = (LOCAL_MARKER + "\r\n").encode() + b"\0"
        code = bytes.fromhex(
            "fa31c08ed8fc"      # cli; xor ax,ax; mov ds,ax; cld
            "be1b7c"            # mov si, 0x7c1b (the message, right after this code)
            "baf803"            # mov dx, 0x3f8 (COM1)
            "ac84c07403eeebf8"  # next: lodsb; test al,al; jz done; out dx,al; jmp next
            "b000e6f4f4ebfd")   # done: mov al,0; out 0xf4,al (QEMU exits); hlt; jmp hlt
        assert len(code) == 0x1b
        sector = code + message
        sector += bytes(510 - len(sector)) + b"\x55\xaa"
        out.write_bytes(sector + bytes(1024 * 1024 - 512))

    return cached_file(f"pxe-bios-disk-{digest(HERE.read_bytes())}.img", build)


# Where a UEFI local disk keeps its boot loader: CentOS's own GRUB, or only an installed
# shim's removable-media path (BOOTX64.EFI with the fallback fbx64.efi beside it).
UEFI_DISK_LAYOUTS = {
    "centos": ("/EFI/centos", ("grubx64.efi",)),
    "shim-fallback": ("/EFI/BOOT", ("BOOTX64.EFI", "fbx64.efi")),
}
OTHER_MARKER = "KSBUILD-OTHER-SYSTEM"


def uefi_local_disk(layout: str = "centos") -> Path:
    """A GPT disk with an EFI system partition holding, per UEFI_DISK_LAYOUTS, a GRUB that
    prints LOCAL_MARKER ("centos") or OTHER_MARKER ("shim-fallback") and powers off."""
    folder, names = UEFI_DISK_LAYOUTS[layout]
    marker = LOCAL_MARKER if layout == "centos" else OTHER_MARKER

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as temp:
            work = Path(temp)
            grub = work / "grubx64.efi"
            make_grub_efi(grub, prefix=folder, early_config=f"echo {marker}\nhalt\n",
                          modules=("normal", "echo", "halt"))
            esp = work / "esp.img"
            run(["mkfs.vfat", "--invariant", "-C", esp, "32768"])
            run(["mmd", "-i", esp, "::/EFI", f"::{folder}"])
            for name in names:
                run(["mcopy", "-i", esp, grub, f"::{folder}/{name}"])
            with out.open("r+b") as disk:
                disk.truncate(40 * 1024 * 1024)
            run(["sgdisk", "-o", "-n", "1:2048:+32M", "-t", "1:ef00", out])
            with out.open("r+b") as disk:
                disk.seek(2048 * 512)
                disk.write(esp.read_bytes())

    key = digest(HERE.read_bytes(), layout, tool_versions())
    return cached_file(f"pxe-uefi-disk-{layout}-{key}.img", build)


def disk_args(disk: Path, bios: bool) -> tuple[str, ...]:
    """QEMU arguments for a local disk that boots after the NIC (bootindex 1)."""
    args = ("-drive", f"if=none,id=localdisk,format=raw,snapshot=on,file={disk}",
            "-device", "ide-hd,drive=localdisk,bootindex=2")
    if bios:
        args += ("-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
    return args


def build(site_path: Path, out: Path, base: Path | None = None, **options: Any) -> pxe.Result:
    loaded = site.load(site_path)
    return pxe.build_tree(pxe.Options(loaded, out, base or small_base_iso(), **options))


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mode, sha256)} of every file and folder under root."""
    found: dict[str, tuple[int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            data = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            found[str(path.relative_to(root))] = (mode, data)
    return found

def request_from(source: str, port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request to 127.0.0.1:`port` from loopback address `source` (127.0.0.2 stands for
    an installing host)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                            source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class EventServer:
    """`ksbuild serve` on a free loopback port, in this process."""

    def __init__(self, tree: Path) -> None:
        self.lines: list[str] = []
        self.server = serve.start(tree, "127.0.0.1:0", self.lines.append)
        self.port = self.server.socket.getsockname()[1]
        self.thread = serve.run_in_thread(self.server)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return request_from("127.0.0.1", self.port, method, path, body, headers)

    def event(self, host: str, state: str, **fields: str) -> tuple[int, bytes]:
        return self.request("POST", f"/events/{host}/{state}", urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def status(self, since: int = 0) -> dict[str, object]:
        code, body = self.request("GET", f"/status.json?since={since}")
        assert code == 200, body
        data: dict[str, object] = json.loads(body)
        return data

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def fleet_tree(folder: Path, count: int) -> tuple[Path, list[str]]:
    """A PXE tree of `count` hosts with only what `ksbuild serve` and the events need (the
    index and http/): big fleets for the page and load tests without rendering kickstarts."""
    names = [f"host{n:05d}.example.com" for n in range(count)]
    hosts = [pxestate.IndexedHost(name, ":".join(f"{b:02x}" for b in
                                                 (0x52, 0x54, 1, n >> 16, n >> 8 & 255, n & 255)),
                                  {})
             for n, name in enumerate(names)]
    (folder / "http").mkdir(parents=True, exist_ok=True)
    (folder / pxestate.INDEX).write_bytes(pxestate.index_data(GUEST_SERVER, hosts))
    return folder, names
