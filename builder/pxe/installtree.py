"""The base DVD as an install tree on the boot server (`pxe: {install_tree: local}`).

Every file of the ISO is published under the PXE tree's http/ (http/centos/7.9.2009/os/x86_64/,
the layout of vault.centos.org), read straight out of the image: pycdlib lists the directory
records (extent and size of each file), and the bytes move with copy_file_range, inside the
kernel as `cp` does (builder/media/writer.py). No root, no loop mount.

A rebuild keeps what it already published: `installtree.json` at the tree's root records the
ISO (size, mtime) and each file's extent and size. A file whose record and published copy
(size, mtime) both match is hard-linked into the new tree instead of copied, so a rebuild of
an unchanged site copies nothing, and the old and new trees share the bytes.

Then the tree is checked as yum would check it: every file `repodata/repomd.xml` names against
its checksum, every package of the primary metadata present with its size, and a sample of
them (all with pxe.verify_packages: all) against their checksums; `.treeinfo`'s kernel, initrd
and stage 2 image must be there too, since anaconda fetches them from `inst.repo`.
"""

from __future__ import annotations

import bz2
import configparser
import gzip
import hashlib
import json
import lzma
import os
import xml.etree.ElementTree as ET
from calendar import timegm
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from builder.errors import InputError
from builder.media.writer import _copy_range

RECORD = "installtree.json"
RECORD_FORMAT = 1
FILE_MODE = 0o644
DIR_MODE = 0o755
SAMPLE = 64  # packages whose checksum is verified when not all are
REPO_NS = "{http://linux.duke.edu/metadata/repo}"
COMMON_NS = "{http://linux.duke.edu/metadata/common}"
HASHES = {"sha": "sha1", "sha1": "sha1", "sha256": "sha256", "sha512": "sha512", "md5": "md5",
          "sha224": "sha224", "sha384": "sha384"}
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class IsoFile:
    path: str  # relative, real (Rock Ridge) name: "Packages/bash-4.2.46-34.el7.x86_64.rpm"
    offset: int  # byte offset of its data in the image
    size: int
    mtime: int  # seconds since the epoch, from its directory record


@dataclass
class Published:
    folder: str  # under http/, e.g. "centos/7.9.2009/os/x86_64"
    files: int = 0
    size: int = 0
    copied: int = 0  # files copied out of the ISO
    copied_bytes: int = 0
    kept: int = 0  # files hard-linked from the tree already published
    packages: int = 0
    packages_hashed: int = 0


def folder_for(release: str) -> str:
    """The tree's folder under http/, as on the vault: centos/<release>/os/x86_64."""
    return f"centos/{release}/os/x86_64"


def full_release(discinfo_release: str, known: tuple[str, ...]) -> str:
    """7.9 (what .discinfo says) as 7.9.2009 (the vault's folder name), if known."""
    matches = [r for r in known if r.rsplit(".", 1)[0] == discinfo_release]
    return matches[0] if len(matches) == 1 else discinfo_release


# ---------------------------------------------------------------------------------------------
# Listing and copying.


def listing(iso: Any) -> list[IsoFile]:
    """Every regular file of the opened image (pycdlib), by its Rock Ridge name if it has
    them, else its ISO 9660 name without the version."""
    block = iso.logical_block_size
    files: list[IsoFile] = []
    rock_ridge = iso.has_rock_ridge()

    def walk(record: Any, prefix: str) -> None:
        for child in record.children:
            if child is None or child.is_dot() or child.is_dotdot():
                continue
            if rock_ridge and child.rock_ridge is not None:
                name = child.rock_ridge.name().decode("utf-8", "replace")
                if child.rock_ridge.is_symlink():
                    continue
            else:
                name = child.file_identifier().decode("ascii", "replace").split(";")[0]
            path = f"{prefix}{name}"
            if child.is_dir():
                walk(child, path + "/")
            elif child.data_continuation is not None or (files and files[-1].path == path):
                raise InputError(f"{path}: a file in several extents (over 4 GiB) is not "
                                 "supported in an install tree")
            else:
                files.append(IsoFile(path, child.extent_location() * block,
                                     child.get_data_length(), _record_time(child.date)))

    walk(iso.pvd.root_directory_record(), "")
    return files


def _record_time(date: Any) -> int:
    """A directory record's date (local time + offset in 15-minute steps) as epoch seconds."""
    try:
        stamp = timegm((date.years_since_1900 + 1900, date.month, date.day_of_month, date.hour,
                        date.minute, date.second, 0, 0, 0))
        return int(stamp - date.gmtoffset * 15 * 60)
    except (AttributeError, ValueError, OverflowError):
        return 0


def publish(iso: Any, iso_fd: int, iso_id: list[int], root: Path, folder: str,
            previous: Path | None) -> Published:
    """Copy every file of the image to root/http/<folder>/, hard-linking those that `previous`
    (the tree being replaced) already holds unchanged; write root/installtree.json."""
    files = listing(iso)
    base = root / "http" / folder
    old = _old_record(previous, iso_id, folder)
    result = Published(folder)
    made: set[Path] = set()
    for item in files:
        target = base / item.path
        if target.parent not in made:
            _folders(root / "http", target.parent)
            made.add(target.parent)
        result.files += 1
        result.size += item.size
        if previous is not None and _link_unchanged(old.get(item.path), item, previous /
                                                    "http" / folder / item.path, target):
            result.kept += 1
            continue
        _copy_out(iso_fd, item, target)
        result.copied += 1
        result.copied_bytes += item.size
    record = {"format": RECORD_FORMAT, "iso": iso_id, "folder": folder,
              "files": {f.path: [f.offset, f.size, f.mtime] for f in files}}
    (root / RECORD).write_text(json.dumps(record, sort_keys=True) + "\n")
    os.chmod(root / RECORD, FILE_MODE)
    return result


def iso_identity(fd: int) -> list[int]:
    info = os.fstat(fd)
    return [info.st_size, info.st_mtime_ns]


def _old_record(previous: Path | None, iso_id: list[int], folder: str) -> dict[str, list[int]]:
    if previous is None:
        return {}
    try:
        record = json.loads((previous / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or \
            record.get("iso") != iso_id or record.get("folder") != folder:
        return {}
    files = record.get("files")
    return files if isinstance(files, dict) else {}


def _link_unchanged(recorded: list[int] | None, item: IsoFile, old: Path, target: Path) -> bool:
    if recorded != [item.offset, item.size, item.mtime]:
        return False
    try:
        info = old.stat()
        if info.st_size != item.size or int(info.st_mtime) != item.mtime:
            return False
        os.link(old, target)
    except OSError:
        return False
    return True


def _folders(top: Path, folder: Path) -> None:
    """Make `folder` and its parents below `top`, each with DIR_MODE whatever the umask."""
    path = top
    for part in folder.relative_to(top).parts:
        path = path / part
        if not path.is_dir():
            path.mkdir()
            os.chmod(path, DIR_MODE)


def _copy_out(iso_fd: int, item: IsoFile, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        for _ in _copy_range(iso_fd, fd, item.offset, 0, item.size):
            pass
    finally:
        os.close(fd)
    os.utime(target, (item.mtime, item.mtime))


# ---------------------------------------------------------------------------------------------
# Verifying, as yum and anaconda read the tree.


def verify(tree: Path, all_packages: bool = False, sample: int = SAMPLE,
           what: str | None = None) -> tuple[int, int]:
    """Check the published tree; raise InputError naming what is wrong (as `what`). Returns
    (packages listed in the primary metadata, packages whose checksum was computed)."""
    problems: list[str] = []
    _check_treeinfo(tree, problems)
    hrefs = _check_repodata(tree, problems)
    packages, hashed = 0, 0
    if "primary" in hrefs and not problems:
        packages, hashed = _check_packages(tree, hrefs["primary"], all_packages, sample,
                                           problems)
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"]
                                 if len(problems) > 10 else [])
        raise InputError(f"{what or tree}: the install tree does not verify: "
                         + "; ".join(shown))
    return packages, hashed


def _check_treeinfo(tree: Path, problems: list[str]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string((tree / ".treeinfo").read_text(errors="replace"))
    except (OSError, configparser.Error) as exc:
        problems.append(f".treeinfo: {exc}".splitlines()[0])
        return
    wanted = [parser.get("stage2", "mainimage", fallback=None),
              parser.get("images-x86_64", "kernel", fallback=None),
              parser.get("images-x86_64", "initrd", fallback=None)]
    for relative in wanted:
        if relative and not (tree / relative).is_file():
            problems.append(f"{relative}: named by .treeinfo, missing")


def _check_repodata(tree: Path, problems: list[str]) -> dict[str, str]:
    """Every file repomd.xml names, against its checksum (and size); {type: href}."""
    try:
        root = ET.fromstring((tree / "repodata" / "repomd.xml").read_bytes())
    except (OSError, ET.ParseError) as exc:
        problems.append(f"repodata/repomd.xml: {exc}")
        return {}
    hrefs = {}
    for data in root.iter(f"{REPO_NS}data"):
        location = data.find(f"{REPO_NS}location")
        checksum = data.find(f"{REPO_NS}checksum")
        href = location.get("href", "") if location is not None else ""
        if not href or checksum is None:
            problems.append(f"repodata/repomd.xml: {data.get('type')}: no location or checksum")
            continue
        hrefs[data.get("type", "")] = href
        size = data.findtext(f"{REPO_NS}size")
        _check_file(tree, href, checksum.get("type", ""), (checksum.text or "").strip(),
                    int(size) if size and size.isdigit() else None, problems)
    return hrefs


def _check_packages(tree: Path, primary: str, all_packages: bool, sample: int,
                    problems: list[str]) -> tuple[int, int]:
    """Every package of the primary metadata there with its size; a sample (evenly spread
    over the list) or all of them against their checksums."""
    packages = list(_primary_packages(tree / primary, problems))
    step = 1 if all_packages or len(packages) <= sample else len(packages) / sample
    chosen = {int(i * step) for i in range(min(len(packages), sample))} \
        if not all_packages else set(range(len(packages)))
    for index, (href, kind, digest, size) in enumerate(packages):
        if index in chosen:
            _check_file(tree, href, kind, digest, size, problems)
            continue
        try:
            found = (tree / href).stat().st_size
        except OSError:
            problems.append(f"{href}: listed in {primary}, missing")
            continue
        if found != size:
            problems.append(f"{href}: {found} bytes, the primary metadata says {size}")
    return len(packages), len(chosen)


def _primary_packages(path: Path,
                      problems: list[str]) -> Iterator[tuple[str, str, str, int | None]]:
    """(href, checksum type, checksum, size) of each package, read as a stream."""
    try:
        with _open_metadata(path) as stream:
            for _, element in ET.iterparse(stream):
                if element.tag != f"{COMMON_NS}package":
                    continue
                location = element.find(f"{COMMON_NS}location")
                checksum = element.find(f"{COMMON_NS}checksum")
                size = element.find(f"{COMMON_NS}size")
                if location is None or checksum is None:
                    problems.append(f"{path.name}: a package without location or checksum")
                else:
                    wanted = size.get("package") if size is not None else None
                    yield (location.get("href", ""), checksum.get("type", ""),
                           (checksum.text or "").strip(),
                           int(wanted) if wanted and wanted.isdigit() else None)
                element.clear()
    except (OSError, EOFError, lzma.LZMAError, ET.ParseError) as exc:
        problems.append(f"{path.name}: not readable: {exc}")


def _open_metadata(path: Path) -> BinaryIO:
    """The metadata file, decompressed as its suffix says (createrepo writes .gz; .xz and
    .bz2 are allowed too)."""
    unpack: dict[str, Any] = {".gz": gzip.GzipFile, ".xz": lzma.LZMAFile, ".bz2": bz2.BZ2File}
    if path.suffix in unpack:
        return cast(BinaryIO, unpack[path.suffix](path, "rb"))
    return path.open("rb")


def _check_file(tree: Path, href: str, kind: str, expected: str, size: int | None,
                problems: list[str]) -> None:
    name = HASHES.get(kind.lower())
    if name is None:
        problems.append(f"{href}: unknown checksum type {kind!r}")
        return
    path = tree / href
    try:
        found_size = path.stat().st_size
        if size is not None and found_size != size:
            problems.append(f"{href}: {found_size} bytes, the metadata says {size}")
            return
        digest = _hash_file(path, name)
    except OSError as exc:
        problems.append(f"{href}: {exc.strerror or exc}")
        return
    if digest != expected.lower():
        problems.append(f"{href}: {kind} {digest} does not match the metadata's {expected}")


def _hash_file(path: Path, name: str) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, name).hexdigest()
