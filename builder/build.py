"""`ksbuild build`: the whole flow, one direction:
site file -> validated model -> kickstarts -> ISO(s) -> PXE tree -> manifest.

Reproducible: the same inputs and SOURCE_DATE_EPOCH give the same bytes. Incremental: a
rebuild with nothing changed does no work; a change to one host re-renders only that host
(and rebuilds only the media that carry its kickstart). What a build needs to know about the
previous one is in out/.ksbuild/state.json, which is not an output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import __version__, kickstart, manifest, secureboot
from builder.errors import InputError
from builder.manifest import Entry
from builder.output import write_bytes
from builder.overlay import OverlayTree
from builder.progress import Progress, Silent
from builder.run import run
from builder.site import Host, Site
from builder.site import load as load_site

STATE = Path(".ksbuild") / "state.json"
TEMPLATES = "*.j2"  # the template folder may hold other files (the example site) too
Report = Callable[[str], None]


@dataclass
class Options:
    site: Path
    out: Path
    source_date_epoch: int | None = None  # None: SOURCE_DATE_EPOCH, else from the inputs
    jobs: int | None = None
    cache_dir: Path | None = None
    mirror: str | None = None
    report: Report = lambda line: None
    progress: Progress = field(default_factory=Silent)


@dataclass
class Result:
    out: Path
    up_to_date: bool
    source_date_epoch: int
    written: list[str]  # outputs (relative to out) written by this build
    manifest: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # for the user (cli prints them)


# ---------------------------------------------------------------------------------------------
# Inputs: what the build read, and a quick fingerprint of them for the no-op check.


def _files_under(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def input_files(site: Site) -> list[tuple[str, Path, Path]]:
    """(kind, file, folder it is named relative to), for every file the build reads."""
    files = [("site", site.path.resolve(), site.path.resolve().parent)]
    templates = kickstart.template_dir()
    files += [("template", p, templates) for p in _files_under(templates, TEMPLATES)]
    if site.overlays is not None:
        files += [("overlay", p, site.overlays) for p in _files_under(site.overlays)]
    return files


def _stat_key(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _env_digest(names: Iterable[str]) -> dict[str, str]:
    """Hashes of the password variables' values: a changed password must rebuild, and the
    state file must never hold the password itself."""
    return {name: hashlib.sha256(os.environ.get(name, "").encode()).hexdigest()
            for name in sorted(names)}


def _fingerprint(stats: list[list[Any]], env: dict[str, str], sde: str) -> str:
    blob = json.dumps([__version__, stats, env, sde], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def source_date_epoch(files: list[Path], given: int | None) -> tuple[int, str]:
    """SOURCE_DATE_EPOCH and where it came from: the option, the environment, the newest git
    commit touching the inputs, or the newest input's mtime."""
    if given is not None:
        return given, "option"
    if "SOURCE_DATE_EPOCH" in os.environ:
        try:
            return int(os.environ["SOURCE_DATE_EPOCH"]), "environment"
        except ValueError:
            raise InputError("SOURCE_DATE_EPOCH must be a whole number of seconds") from None
    newest = 0
    for folder in sorted({f.parent for f in files}):
        done = run(["git", "-C", folder, "log", "-1", "--format=%ct", "--", "."], check=False)
        if done.returncode == 0 and done.stdout.strip():
            newest = max(newest, int(done.stdout))
    if newest:
        return newest, "git commit of the inputs"
    return max(int(f.stat().st_mtime) for f in files), "newest input's mtime"


# ---------------------------------------------------------------------------------------------
# State of the previous build.


def read_state(out: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((out / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if state.get("ksbuild") == __version__ else {}


def _outputs_intact(out: Path, recorded: dict[str, list[int]]) -> bool:
    for name, (size, mtime_ns) in recorded.items():
        try:
            stat = (out / name).stat()
        except OSError:
            return False
        if stat.st_size != size or stat.st_mtime_ns != mtime_ns:
            return False
    return True


def _snapshot(out: Path) -> dict[str, tuple[int, int, int]]:
    """The media outputs' identities (inode, size, mtime), to tell which a step wrote."""
    return {p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_size,
                                            p.stat().st_mtime_ns)
            for folder in ("iso", "pxe") for p in _files_under(out / folder)}


def _quick_check(options: Options, state: dict[str, Any]) -> bool:
    """True when nothing changed since the last build, decided without loading the site."""
    if not state or Path(state["site"]) != options.site.resolve():
        return False
    try:
        stats = [_stat_key(Path(name)) for name in state["inputs"] + state["outside_inputs"]]
        listed = sorted(str(p) for d, pattern in state["input_dirs"]
                        for p in _files_under(Path(d), pattern))
    except OSError:
        return False
    if listed != sorted(n for n in state["inputs"][1:]):  # all but the site file
        return False  # a file was added to or removed from a template or overlay folder
    sde = str(options.source_date_epoch or os.environ.get("SOURCE_DATE_EPOCH", ""))
    fingerprint = _fingerprint(stats, _env_digest(state["env"]), sde)
    return bool(fingerprint == state["fingerprint"] and _outputs_intact(options.out,
                                                                        state["outputs"]))


# ---------------------------------------------------------------------------------------------
# Kickstarts, re-rendered only for hosts whose inputs changed.


def _host_key(host: Host, shared: str, overlays: OverlayTree) -> str:
    """Everything a host's kickstart depends on: its model, its password hash, the templates
    (`shared`) and its overlay files."""
    overlay = overlays.for_host(host.hostname)
    blob = repr((host, kickstart.root_password_hash(host), shared, overlay))
    return hashlib.sha256(blob.encode()).hexdigest()


def build_kickstarts(site: Site, options: Options, state: dict[str, Any],
                     shared: str) -> tuple[dict[str, Path], dict[str, str], list[str]]:
    """Write out/ks/<host>.cfg for every host; returns the files, the host keys, and the
    names of the files rewritten."""
    folder = options.out / "ks"
    overlays = OverlayTree(site.overlays)
    previous: dict[str, str] = state.get("hosts", {})
    keys = {h.hostname: _host_key(h, shared, overlays) for h in site.hosts}
    paths = {name: folder / f"{name}.cfg" for name in keys}
    stale = tuple(h for h in site.hosts
                  if previous.get(h.hostname) != keys[h.hostname]
                  or not paths[h.hostname].is_file())
    rendered = kickstart.render_site(site, stale, jobs=options.jobs) if stale else {}
    written = []
    for name, text in rendered.items():
        data = text.encode()
        if not paths[name].is_file() or paths[name].read_bytes() != data:
            write_bytes(paths[name], data)
            written.append(f"ks/{name}.cfg")
    for old in sorted(folder.glob("*.cfg")) if folder.is_dir() else []:
        if old.stem not in keys:
            old.unlink()
    return paths, keys, written


# ---------------------------------------------------------------------------------------------
# Base media, ISOs and the PXE tree: each rebuilt only when what it carries changed.


def base_media(site: Site, options: Options, state: dict[str, Any]) -> tuple[Path, str] | None:
    """The verified local base ISO and its sha256 (remembered by size and mtime, so a 4 GiB
    ISO is hashed once, not on every build)."""
    if site.media is None:
        return None
    from builder.media import fetch

    path = fetch.resolve_media(site.media, cache_dir=options.cache_dir, mirror=options.mirror,
                               progress=options.progress)
    known = state.get("media", {})
    stat = _stat_key(path)
    sha = known["sha256"] if known.get("stat") == stat else manifest.sha256_file(path)
    return path, sha


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _intact(path: Path, recorded: dict[str, list[int]], name: str) -> bool:
    return name in recorded and _outputs_intact(path.parent, {path.name: recorded[name]})


def iso_outputs(site: Site) -> dict[str, str | None]:
    """The ISOs the site asks for: output name -> the one host it carries (None: all)."""
    if site.outputs.iso == "none":
        return {}
    if site.outputs.iso == "per-site":
        return {f"iso/{site.path.stem}.iso": None}
    return {f"iso/{h.hostname}.iso": h.hostname for h in site.hosts}


def check_secure_boot(site: Site, media: tuple[Path, str]) -> secureboot.Verdict | None:
    """Is the UEFI first stage each ISO and the PXE tree will hand out revoked? Checked before
    anything is written (with secure_boot.policy: required, a revoked one is an error)."""
    isos = list(iso_outputs(site))
    if not isos and not site.outputs.pxe:
        return None
    return secureboot.check_outputs(site, media[0], isos, "pxe" if site.outputs.pxe else None)


def build_isos(site: Site, options: Options, media: tuple[Path, str], sde: int,
               host_keys: dict[str, str], state: dict[str, Any],
               ks_paths: dict[str, Path]) -> dict[str, str]:
    """out/iso/<site>.iso (every host's kickstart) or out/iso/<host>.iso; name -> key."""
    from builder.media import iso

    base, base_sha = media
    overlay = repr(sorted((str(p), p.read_bytes()) for p in _files_under(site.overlays / "iso"))
                   ) if site.overlays is not None and (site.overlays / "iso").is_dir() else ""
    groups = iso_outputs(site)
    keys = {}
    for name, host in groups.items():
        carried = [host_keys[host]] if host else sorted(host_keys.items())
        keys[name] = _key(base_sha, carried, overlay, sde, __version__)
        target = options.out / name
        if state.get("isos", {}).get(name) == keys[name] and _intact(
                target, state.get("outputs", {}), name):
            continue
        options.report(f"iso: writing {target}")
        carried_names = [host] if host else list(ks_paths)
        rendered = {n: ks_paths[n].read_text(encoding="utf-8") for n in carried_names}
        iso.build_site_iso(site, base, target, host=host, progress=options.progress, epoch=sde,
                           rendered=rendered)
    for old in sorted((options.out / "iso").glob("*.iso")):
        if f"iso/{old.name}" not in keys:
            old.unlink()
    return keys


def build_pxe(site: Site, options: Options, media: tuple[Path, str],
              host_keys: dict[str, str], state: dict[str, Any]) -> tuple[str, list[Path]]:
    """out/pxe: the PXE tree. Returns its key and the boot-loader files it took from this
    machine (inputs)."""
    from builder.pxe import tree as pxe

    settings, _ = pxe.settings_of(site, None)
    loaders = pxe.find_bios_loaders(settings)
    loader_files = [loaders.pxelinux, *loaders.modules.values()]
    key = _key(media[1], sorted(host_keys.items()), repr(site.pxe), __version__,
               [_stat_key(f) for f in loader_files])
    tree = options.out / "pxe"
    if state.get("pxe") != key or not tree.is_dir():
        options.report(f"pxe: writing {tree}")
        if settings.tree_path is None:
            options.report("pxe: pxe.tree_path is not set, so dnsmasq.conf and nginx.conf name "
                           f"{tree.absolute()}: set it to where the tree will be served from")
        _update_tree(tree, lambda new: pxe.build_tree(pxe.Options(
            site=site, out=new, base=media[0], jobs=options.jobs, previous=tree)))
    return key, loader_files


def _update_tree(tree: Path, build_into: Callable[[Path], object]) -> None:
    """Build the PXE tree beside `tree`, then move over only the files that changed, so a
    change to one host rewrites that host's files and no others. The tree's lock is held
    throughout: `ksbuild serve` switching a host that reports done waits, and the hosts that
    have installed (state/) stay installed."""
    from builder.pxe import state as pxestate

    with pxestate.TreeLock(tree) as lock:
        lock.acquire()
        staging = Path(tempfile.mkdtemp(prefix=".pxe.", suffix=".part", dir=tree.parent))
        try:
            new = staging / tree.name
            if (tree / "state").is_dir():
                shutil.copytree(tree / "state", new / "state")
            build_into(new)
            if not tree.is_dir():
                os.replace(new, tree)
                return
            _move_changed(new, tree)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _move_changed(new: Path, tree: Path) -> None:
    """Make `tree` equal to `new` (but for its run-time state/) by moving changed files."""
    fresh = {p.relative_to(new) for p in new.rglob("*") if p.is_file()}
    for relative in sorted(fresh):
        if relative.parts[0] == "state":
            continue
        target = tree / relative
        if not _same_file(new / relative, target):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(new / relative, target)
    for old in sorted(tree.rglob("*"), reverse=True):
        relative = old.relative_to(tree)
        if relative.parts[0] == "state":
            continue
        if old.is_file() and relative not in fresh:
            old.unlink()
        elif old.is_dir() and not any(old.iterdir()) and not (new / relative).is_dir():
            old.rmdir()


def _same_file(new: Path, old: Path) -> bool:
    """Same bytes: the same inode (an install tree's files are hard-linked when unchanged),
    else same size and contents, compared in chunks (an install tree holds 4 GB)."""
    try:
        if new.samefile(old):
            return True
        if new.stat().st_size != old.stat().st_size:
            return False
        with new.open("rb") as a, old.open("rb") as b:
            while True:
                chunk = a.read(1 << 20)
                if chunk != b.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


def _pxe_outputs(tree: Path) -> list[Path]:
    """The tree's files, less what changes at run time (which hosts have installed)."""
    return [p for p in _files_under(tree) if "state" not in p.relative_to(tree).parts]


# ---------------------------------------------------------------------------------------------
# The whole flow.


def build(options: Options) -> Result:
    out = options.out
    state = read_state(out)
    if _quick_check(options, state):
        options.report("nothing changed since the last build: nothing to do")
        document = manifest.read(out)
        return Result(out, True, state["source_date_epoch"], [], document,
                      list(document.get("secure_boot", {}).get("warnings", [])))

    site = load_site(options.site)
    files = input_files(site)
    sde, origin = source_date_epoch([f for _, f, _ in files], options.source_date_epoch)
    options.report(f"SOURCE_DATE_EPOCH={sde} ({origin})")
    shared = hashlib.sha256(repr([(k, str(f.relative_to(root)), f.read_bytes())
                                  for k, f, root in files if k == "template"]).encode()
                            ).hexdigest()
    inputs = [manifest.entry(kind, f, f.relative_to(root).as_posix())
              for kind, f, root in files]

    media = base_media(site, options, state)
    # Before anything is written: with secure_boot.policy: required, a revoked shim stops here.
    verdict = check_secure_boot(site, media) if media is not None else None
    ks_paths, host_keys, written = build_kickstarts(site, options, state, shared)
    options.report(f"kickstarts: {len(written)} written, "
                   f"{len(ks_paths) - len(written)} unchanged")
    outputs = [manifest.entry("kickstart", path, f"ks/{name}.cfg")
               for name, path in sorted(ks_paths.items())]
    for path in ks_paths.values():
        os.utime(path, (sde, sde))  # file times too, for tar and rsync of the output

    before = _snapshot(out)
    iso_keys: dict[str, str] = {}
    pxe_key = None
    loader_files: list[Path] = []
    if media is not None:
        inputs.append(Entry("base-media", media[0].name, media[1], media[0].stat().st_size))
        if site.secure_boot.revocations is not None and verdict is not None:
            inputs.append(manifest.entry("revocations", site.secure_boot.revocations,
                                         site.secure_boot.revocations.name))
        if site.outputs.iso != "none":
            iso_keys = build_isos(site, options, media, sde, host_keys, state, ks_paths)
            outputs += [manifest.entry("iso", out / name, name) for name in sorted(iso_keys)]
        if site.outputs.pxe:
            pxe_key, loader_files = build_pxe(site, options, media, host_keys, state)
            inputs += [manifest.entry("boot-loader", f, f.name) for f in loader_files]
            outputs += [manifest.entry("pxe", f, f.relative_to(out).as_posix())
                        for f in _pxe_outputs(out / "pxe")]
    after = _snapshot(out)
    written += [e.path for e in outputs if e.kind != "kickstart"
                and before.get(e.path) != after.get(e.path)]
    sections = {"secure_boot": verdict.record()} if verdict is not None else {}
    manifest.write(out, __version__, sde, inputs, outputs, sections)
    written.append(manifest.MANIFEST)
    document = manifest.read(out)

    env_names = {h.root_password_env for h in site.hosts if h.root_password_env}
    recorded = {e.path: [(out / e.path).stat().st_size, (out / e.path).stat().st_mtime_ns]
                for e in outputs}
    recorded[manifest.MANIFEST] = [(out / manifest.MANIFEST).stat().st_size,
                                   (out / manifest.MANIFEST).stat().st_mtime_ns]
    input_dirs = [(str(kickstart.template_dir().resolve()), TEMPLATES)]
    if site.overlays is not None:
        input_dirs.append((str(site.overlays), "*"))
    sde_given = str(options.source_date_epoch or os.environ.get("SOURCE_DATE_EPOCH", ""))
    stats = [_stat_key(f) for _, f, _ in files]
    outside = [media[0]] if media else []  # files outside the input folders: media, loaders
    if pxe_key is not None:
        outside += loader_files
    if verdict is not None and site.secure_boot.revocations is not None:
        outside.append(site.secure_boot.revocations)
    stats_all = stats + [_stat_key(f) for f in outside]
    new_state = {
        "ksbuild": __version__,
        "site": str(options.site.resolve()),
        "inputs": [s[0] for s in stats],
        "outside_inputs": [str(f) for f in outside],
        "input_dirs": input_dirs,
        "env": sorted(env_names),
        "fingerprint": _fingerprint(stats_all, _env_digest(env_names), sde_given),
        "source_date_epoch": sde,
        "hosts": host_keys,
        "outputs": recorded,
        "media": {"stat": _stat_key(media[0]), "sha256": media[1]} if media else {},
        "isos": iso_keys,
        "pxe": pxe_key,
    }
    write_bytes(out / STATE, json.dumps(new_state, sort_keys=True).encode())
    return Result(out, False, sde, written, document, verdict.warnings if verdict else [])


@dataclass(frozen=True)
class Comparison:
    path: str
    verdict: str  # "same", "different", "missing", "extra"
    offset: int | None = None  # first differing byte, for "different"


def verify(out: Path, report: Report = lambda line: None) -> list[Comparison]:
    """Rebuild from the recorded inputs into a temporary folder; compare every output."""
    document = manifest.read(out)
    state = read_state(out)
    if not state:
        raise InputError(f"{out / STATE}: no build state; rebuild with `ksbuild build`")
    with tempfile.TemporaryDirectory(prefix="ksbuild-verify.") as tmp:
        again = build(Options(site=Path(state["site"]), out=Path(tmp) / "out",
                              source_date_epoch=int(document["source_date_epoch"]),
                              report=report))
        names = sorted({e["path"] for e in document["outputs"]} | {manifest.MANIFEST})
        rebuilt = {e["path"] for e in again.manifest["outputs"]}
        results = []
        for name in names:
            mine, theirs = out / name, again.out / name
            if not mine.is_file() or not theirs.is_file():
                results.append(Comparison(name, "missing"))
                continue
            offset = manifest.first_difference(mine, theirs)
            results.append(Comparison(name, "same" if offset is None else "different", offset))
        results += [Comparison(name, "extra") for name in sorted(rebuilt - set(names))]
    return results
