"""`ksbuild build`: the whole flow, one direction:
site file -> validated model -> kickstarts -> ISO(s) -> PXE tree -> manifest.

Reproducible: the same inputs and SOURCE_DATE_EPOCH give the same bytes. Incremental: a
rebuild with nothing changed does no work; a change to one host re-renders only that host
(and rebuilds only the media that carry its kickstart). What a build needs to know about the
previous one is in its state.json, which is not an output.

All or nothing: OUT's outputs (ks/, iso/, pxe/, manifest.json) are symlinks into
OUT/.ksbuild/current, itself a symlink to one generation folder (builder.output.Generations).
A build writes a new generation beside the current one (unchanged files are hard links to
the current ones) with its manifest and state, and switches `current` in one rename: a
reader sees the old outputs or the new ones, never a mix, whenever the build is killed. It
makes the new generation from the spare the last build left (the one it replaced, pruned to
the files both share), so that it touches only what changed. A
build holds OUT/.ksbuild/lock (flock) throughout; a second build into OUT waits for it. The
next build removes what a dead one left (only its own names, only unlocked ones).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import operator
import os
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from builder import __version__, manifest, records
from builder.errors import InputError
from builder.gcpause import no_gc
from builder.manifest import Entry
from builder.output import (
    IO_THREADS,
    Generations,
    link_new_files,
    link_or_copy,
    link_tree,
    remove_tree,
    same_bytes,
    sweep,
    unlink_files,
    write_bytes,
    write_new,
)
from builder.progress import Progress, Silent
from builder.records import Identity

if TYPE_CHECKING:  # imported where used: a no-op build needs none of them (the command's
    # start-up), a build without a PXE tree no PXE code
    from concurrent.futures import ThreadPoolExecutor

    from builder import kickstart, secureboot
    from builder.pxe import tree as pxe_tree
    from builder.pxe.menus import BootHost
    from builder.site import Host, Site
    from builder.trash import Trash

CURRENT = Path(".ksbuild") / "current"  # symlink to the current generation
STATE = CURRENT / "state.json"
# Beside it, what only a build with work to do reads (a no-op build of a large fleet need not
# parse 20,000 keys): hostname -> key, of its kickstarts, its boot entries, its ISO; and the
# outputs its spare lacks (all 60,000 after a build that rewrote everything).
KEYS = CURRENT / "keys.json"
KEYED = {"hosts": dict, "pxe_entries": dict, "isos": dict, "changed": list}
# Beside them, once the spare holds every output again (_refill_replaced): "changed" is
# then none. Written after the spare is complete, so a build killed before leaves the list.
REFILLED = CURRENT / "spare-refilled"
LOCK = Path(".ksbuild") / "lock"
SITE_CACHE = Path(".ksbuild") / "site-cache"  # the site loader's per-host cache
TEMPLATE_CACHE = Path(".ksbuild") / "templates"  # compiled templates (kickstart.py)
TRASH = Path(".ksbuild") / "trash"  # replaced files, deleted during the next build (trash.py)
ENTRIES = ("ks", "iso", "pxe", manifest.MANIFEST)  # in OUT: symlinks into CURRENT
KINDS = {"ks": "kickstart", "iso": "iso", "pxe": "pxe"}  # the manifest's kind of each's files
# What ksbuild before generations left in OUT when killed.
OLD_DEBRIS = (".ks.*.part", ".ks.*.old", f".{manifest.MANIFEST}.*.part")
# The temporary symlink _link_entries renames over an entry: what a build killed meanwhile
# can leave in OUT.
LINK_TEMP = ".{}.link"
LINK_DEBRIS = tuple(LINK_TEMP.format(name) for name in ENTRIES)
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
    # The PXE tree's path named in dnsmasq.conf and nginx.conf without pxe.tree_path
    # (default OUT/pxe; `verify` rebuilds elsewhere and names the original).
    pxe_path: Path | None = None


@dataclass
class Result:
    out: Path
    up_to_date: bool
    source_date_epoch: int
    written: list[str]  # outputs (relative to out) written by this build
    outputs: int  # how many outputs the manifest lists
    warnings: list[str] = field(default_factory=list)  # for the user (cli prints them)
    # The manifest, when the build has it in hand; else read on first use (a no-op build of
    # a large fleet must not parse its 60,000 entries only to say it had nothing to do).
    document: dict[str, Any] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        if self.document is None:
            self.document = manifest.read(self.out)
        return self.document


# ---------------------------------------------------------------------------------------------
# Inputs: what the build read, and a quick fingerprint of them for the no-op check.


def _files_under(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


def input_files(site: Site) -> list[tuple[str, Path, Path]]:
    """(kind, file, folder it is named relative to), for every file the build reads."""
    from builder import kickstart

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
    from builder.run import run  # subprocess: not for a no-op build (~5 ms)

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
    """The last build's state: its state.json, with "outputs" (name -> identity) and
    "records" (builder.records) from its table of outputs."""
    return _with_outputs(_read_state(out))


def _read_state(out: Path) -> dict[str, Any]:
    """read_state without "outputs": the table's columns are enough for the no-op check, and
    a dict of 60,000 identities (a large PXE fleet's) is a tenth of a no-op build."""
    try:
        state: dict[str, Any] = json.loads((out / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = records.read(out / CURRENT) if state.get("ksbuild") == __version__ else None
    if table is None:
        return {}
    return {**state, "records": table}


def _with_outputs(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "outputs": state["records"].identities()} if state else state


def _with_keys(out: Path, state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the last build's keys (none if they cannot be read: all is rebuilt)."""
    try:
        keys = json.loads((out / KEYS).read_text(encoding="utf-8")) if state else {}
    except (OSError, ValueError):
        keys = {}
    if not isinstance(keys, dict):
        keys = {}
    if keys.get("changed") and (out / REFILLED).exists():
        keys["changed"] = []  # the spare holds them: _refill_replaced finished
    return {**state, **{name: keys[name] for name, kind in KEYED.items()
                        if isinstance(keys.get(name), kind)}}


def _identity(path: Path) -> Identity:
    """What tells a rewritten or replaced file: size, mtime and inode."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _identity_or_none(path: str) -> Identity | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _outputs_intact(out: Path, recorded: dict[str, Identity]) -> bool:
    return _all_intact(out, recorded, recorded.values())


def _all_intact(out: Path, names: Iterable[str], identities: Iterable[Identity]) -> bool:
    """Each named output (relative to OUT) has its identity, in order; False at the first
    that has not."""
    with contextlib.closing(_identities_now(out, names)) as now:
        return all(map(operator.eq, identities, now))


def _intact_outputs(out: Path, recorded: dict[str, Identity]) -> set[str]:
    """The outputs (relative to OUT) whose file has the identity recorded."""
    return set(itertools.compress(recorded, map(
        operator.eq, recorded.values(), _identities_now(out, recorded))))


def _identities_now(out: Path, names: Iterable[str]) -> Generator[Identity | None]:
    """Each output's identity now (None: not there), in order. Each is stat'ed by its name in
    its folder, opened once (names come sorted: folder by folder): ~3.1 us a file on this VM
    against ~4.2 us through its whole path, for the 60,000 outputs of a large PXE fleet that
    a no-op build stats."""
    with contextlib.ExitStack() as opened:
        folders: dict[str, int | None] = {}
        current, fd = None, None
        for name in names:
            folder, _, base = name.rpartition("/")
            if folder != current:
                if folder not in folders:
                    folders[folder] = _open_folder(f"{out}/{folder}", opened)
                current, fd = folder, folders[folder]
            yield None if fd is None else _identity_in(fd, base)


def _identity_in(folder: int, name: str) -> Identity | None:
    try:
        stat = os.stat(name, dir_fd=folder)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _open_folder(path: str, opened: contextlib.ExitStack) -> int | None:
    """A descriptor of the folder at `path` (through OUT's symlinks into the current
    generation), closed with `opened`; None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    opened.callback(os.close, fd)
    return fd


def _output_path(out: Path) -> Callable[[str], str]:
    """An output's path (relative to OUT) as a string through its top-level entry resolved
    once (OUT/pxe is a symlink into the current generation), to stat 60,000 outputs of a
    large PXE fleet quickly."""
    tops: dict[str, str] = {}

    def path(name: str) -> str:
        top, _, rest = name.partition("/")
        if not rest:
            return f"{out}/{name}"
        if top not in tops:
            tops[top] = os.path.realpath(f"{out}/{top}")
        return f"{tops[top]}/{rest}"
    return path


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
    fingerprint = _fingerprint(stats, _env_digest(state["env"]), _given_epoch(options))
    return bool(fingerprint == state["fingerprint"] and _entries_linked(options.out)
                and _records_intact(options.out, state["records"]))


def _records_intact(out: Path, table: records.Records) -> bool:
    return _all_intact(out, table.names, zip(table.sizes, table.mtimes, table.inodes))


def _entries_linked(out: Path) -> bool:
    """OUT's outputs are the current generation's (not, say, a tree `ksbuild pxe -o OUT/pxe`
    put there since)."""
    for name in ENTRIES:
        entry = out / name
        if os.path.lexists(entry) and not (
                entry.is_symlink() and os.readlink(entry) == (CURRENT / name).as_posix()):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Kickstarts, re-rendered only for hosts whose inputs changed.


def _password_key(host: Host) -> str:
    """What the host's password hash depends on, cheaply: the hash given, or a digest of the
    password variable's value (the salt seed and hostname are in the host's model; running
    sha512_crypt for every host of a fleet on every build would cost seconds)."""
    if host.root_password_hash:
        return host.root_password_hash
    value = os.environ.get(host.root_password_env or "", "")
    return hashlib.sha256(value.encode()).hexdigest()


def _group_key(host: Host, rest: str) -> str:
    """What a host's kickstarts depend on besides its model: its password, and `rest`."""
    return hashlib.sha256(f"{_password_key(host)!r}, {rest}".encode()).hexdigest()[:32]


def host_keys(site: Site, shared: str) -> dict[str, str]:
    """hostname -> everything its kickstarts depend on: its model, its password, the
    templates (`shared`) and its overlay files."""
    from builder.overlay import OverlayTree  # not for a no-op build

    overlays = OverlayTree(site.overlays)
    digests = site.host_digests  # equal digests: equal models (no repr of every host)
    own = overlays.own_folders()
    # Each key is the host's digest and the digest of what else it depends on (its group:
    # the password key, `shared`, the overlay), 128 bits of each: no sha256 a host (3.7 us
    # each, 1/2 of this step for 10,000 hosts). The overlay of a host without its own
    # folder (most) is the same for all, so it is read and repr'd once, and the group of
    # such hosts is made once for each password given (most hosts share the root hash).
    common = f"{shared!r}, {overlays.without_own()!r})"
    groups: dict[tuple[str | None, str | None], str] = {}
    keys = {}
    for host in site.hosts:
        name = host.hostname
        if own is not None and (not own or name.lower() not in own):
            given = (host.root_password_hash, host.root_password_env)
            group = groups.get(given) or groups.setdefault(given, _group_key(host, common))
        else:
            group = _group_key(host, f"{shared!r}, {overlays.for_host(name)!r})")
        keys[name] = digests[name][:32] + group
    return keys


def _unchanged(keys: dict[str, str], previous: dict[str, str], intact: Intact,
               files: Callable[[str], Iterable[str]]) -> frozenset[str]:
    """Hosts whose key is the `previous` build's and whose output `files` (relative to OUT)
    are `intact` (those it recorded): their files can be hard-linked, not rendered again.
    When every output recorded is intact, a host's key suffices: the build that recorded it
    wrote its files (a key covers the host's file names, and the steps it has outputs of)."""
    same = (name for name, key in keys.items() if previous.get(name) == key)
    if intact.complete:
        return frozenset(same)
    return frozenset(name for name in same if intact.issuperset(files(name)))


class Intact(frozenset[str]):
    """The previous build's outputs (relative to OUT) still as it recorded them; `complete`:
    all of them."""
    complete = False


def intact_outputs(out: Path, state: dict[str, Any], sde: int,
                   stats: Stats | None = None) -> Intact:
    """The previous build's outputs still as it recorded them, stat'ed once for the whole
    build (by `stats`, if begun); none when the file times change (SOURCE_DATE_EPOCH): a
    link to one would change the live file's time too."""
    if state.get("source_date_epoch") != sde:
        return Intact()
    recorded = state.get("outputs", {})
    intact = Intact(stats.result() if stats is not None else _intact_outputs(out, recorded))
    intact.complete = bool(intact) and len(intact) == len(recorded)
    return intact


class Stats:
    """_intact_outputs(out, recorded) computed by a forked child while the build loads and
    checks the site (~0.25 s each for 60,000 outputs of a large PXE fleet: on the other core,
    where a thread would take turns with the main one for the GIL around each os.stat). The
    child sends a byte per output (1: intact, in `recorded`'s order) down a pipe. result() is
    exactly what the serial call gives: it is the serial call, made again here, if anything
    went wrong (the child died, failed, or sent anything else). close() kills and reaps it."""

    MAGIC = b"ksbuild-intact\n"

    def __init__(self, out: Path, recorded: dict[str, Identity]) -> None:
        self.out, self.recorded = out, recorded
        self.pid: int | None = None
        self.pipe: int | None = None
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            raise
        if pid == 0:
            _stats_child(out, recorded, write)  # never returns
        os.close(write)
        self.pid, self.pipe = pid, read

    def result(self) -> set[str]:
        try:
            answer = self._answer()
        except Exception:  # noqa: BLE001 - any failure of the child: the serial call
            answer = None
        finally:
            self.close()
        return _intact_outputs(self.out, self.recorded) if answer is None else answer

    def _answer(self) -> set[str] | None:
        assert self.pipe is not None and self.pid is not None
        chunks = []
        while chunk := os.read(self.pipe, 1 << 20):
            chunks.append(chunk)
        data = b"".join(chunks)
        pid, self.pid = self.pid, None
        _, status = os.waitpid(pid, 0)
        head = self.MAGIC + len(self.recorded).to_bytes(8, "big")
        flags = data[len(head):]
        if (os.waitstatus_to_exitcode(status) != 0 or not data.startswith(head)
                or len(flags) != len(self.recorded) or flags.translate(None, b"\0\1")):
            return None
        return set(itertools.compress(self.recorded, flags))

    def close(self) -> None:
        """Idempotent: the pipe closed, the child (if still running) killed and reaped."""
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None
        if self.pid is not None:
            import signal  # only a rebuild's parent comes here

            pid, self.pid = self.pid, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _stats_child(out: Path, recorded: dict[str, Identity], pipe: int) -> NoReturn:
    """The forked child of Stats: its answer down `pipe`, then out, whatever happens (never
    back into the build's code, never through the parent's exit handlers). Ctrl-C (sent to
    the whole process group) raises KeyboardInterrupt here too: out. A parent killed outright
    leaves it to finish its stat (a fraction of a second) and fail on the broken pipe."""
    code = 1
    try:
        # Nothing of the parent's but the pipe and the standard streams: in particular not
        # OUT's lock (flock), which a copy of its descriptor would hold while the child lives.
        os.closerange(3, pipe)
        os.closerange(pipe + 1, os.sysconf("SC_OPEN_MAX"))
        view = memoryview(_stats_answer(out, recorded))
        while view:
            view = view[os.write(pipe, view):]
        code = 0
    finally:
        os._exit(code)


def _stats_answer(out: Path, recorded: dict[str, Identity]) -> bytes:
    intact = _intact_outputs(out, recorded)
    return (Stats.MAGIC + len(recorded).to_bytes(8, "big")
            + bytes(name in intact for name in recorded))


@contextlib.contextmanager
def _stats_begun(options: Options, state: dict[str, Any]) -> Iterator[Stats | None]:
    """The previous build's outputs stat'ed meanwhile (Stats), if there are any and their
    time can still be the new build's, and the build has one thread (a child forked while
    another thread holds a lock could wait for it forever); else None: stat'ed when needed."""
    try:
        given: int | None = int(_given_epoch(options))
    except ValueError:  # none given (or not a number: the build says so)
        given = None
    threading = sys.modules.get("threading")  # not imported: no other thread
    if (not state.get("outputs") or given not in (None, state.get("source_date_epoch"))
            or (threading is not None and threading.active_count() > 1)):
        yield None
        return
    try:
        stats = Stats(options.out, state["outputs"])
    except OSError:  # no process or pipe to spare: the serial call
        yield None
        return
    try:
        yield stats
    finally:
        stats.close()


def _given_epoch(options: Options) -> str:
    """SOURCE_DATE_EPOCH as given, the option's or else the environment's ("" if neither): as
    the state's fingerprint holds it."""
    if options.source_date_epoch is not None:
        return str(options.source_date_epoch)
    return os.environ.get("SOURCE_DATE_EPOCH", "")


def _ks_name(hostname: str) -> list[str]:
    return [f"ks/{hostname}.cfg"]


def kickstart_writer(options: Options, sde: int, into: Path, relink: bool,
                     known: Callable[[str], str | None]) -> Callable[[Host, str], str | None]:
    """What becomes of a host's kickstart where it is rendered (kickstart.Variant.output: a
    render worker writes it): <into>/ks/<host>.cfg, a hard link to OUT's if it has the same
    bytes, else written (mode: the umask's; time: SOURCE_DATE_EPOCH, for tar and rsync of
    the output; `relink`: OUT's files have that time too). Its sha256 if written."""
    folder, current = f"{into}/ks/", f"{options.out}/ks/"
    os.makedirs(folder, exist_ok=True)

    def write(host: Host, text: str) -> str | None:
        name = host.hostname
        old, new = f"{current}{name}.cfg", f"{folder}{name}.cfg"
        data = text.encode()
        sha = hashlib.sha256(data).hexdigest()
        if relink and same_bytes(old, data, sha, known(f"{name}.cfg")) and _linked(old, new):
            return None
        write_new(new, data)
        os.utime(new, (sde, sde))
        return sha
    return write


def write_kickstarts(options: Options, keys: dict[str, str], unchanged: frozenset[str],
                     written: dict[str, str | None], into: Path,
                     kept: frozenset[str] = frozenset()) -> dict[str, str]:
    """<into>/ks/<host>.cfg of the `unchanged` hosts: hard links to OUT's (`kept`: outputs
    the generation holds already, from its spare); the others' are `written` (by
    kickstart_writer: hostname -> sha256, None where linked). Returns the sha256 of the files
    written."""
    folder, current = f"{into}/ks/", f"{options.out}/ks/"
    hashes = {}
    for name in sorted(keys):
        if name in unchanged:
            if f"ks/{name}.cfg" not in kept:
                os.link(f"{current}{name}.cfg", f"{folder}{name}.cfg")
            continue
        sha = written[name]
        if sha is not None:
            hashes[f"ks/{name}.cfg"] = sha
    return hashes


def recorded_hash(out: Path, top: str, known: dict[str, str], previous: dict[str, Identity]
                  ) -> Callable[[str], str | None]:
    """The sha256 of OUT's output <top>/<name> as the last build recorded it, if the
    file is still the one it recorded (`previous`: one stat, no read); else None."""
    path = _output_path(out)

    def sha256(name: str) -> str | None:
        sha, identity = known.get(f"{top}/{name}"), previous.get(f"{top}/{name}")
        if sha is None or identity is None:
            return None
        try:
            stat = os.stat(path(f"{top}/{name}"))
        except OSError:
            return None
        return sha if (stat.st_size, stat.st_mtime_ns, stat.st_ino) == identity else None
    return sha256


def _linked(source: str, target: str) -> bool:
    try:
        os.link(source, target)
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Base media, ISOs and the PXE tree: each rebuilt only when what it carries changed.


def base_media(site: Site, options: Options, state: dict[str, Any]) -> tuple[Path, str] | None:
    """The verified local base ISO and its sha256 (remembered by size and mtime, so a 4 GiB
    ISO is hashed once, not on every build, nor twice when the site pins its sha256)."""
    if site.media is None:
        return None
    from builder.media import fetch

    known = state.get("media", {})

    @functools.cache
    def sha256_of(path: Path) -> str:
        recorded = known.get("stat") == _stat_key(path)
        return str(known["sha256"]) if recorded else manifest.sha256_file(path)

    path = fetch.resolve_media(site.media, cache_dir=options.cache_dir, mirror=options.mirror,
                               progress=options.progress, sha256_of=sha256_of)
    return path, sha256_of(path)


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _intact(path: Path, recorded: dict[str, Identity], name: str) -> bool:
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
    from builder import secureboot

    isos = list(iso_outputs(site))
    if not isos and not site.outputs.pxe:
        return None
    return secureboot.check_outputs(site, media[0], isos, "pxe" if site.outputs.pxe else None)


def build_isos(site: Site, options: Options, media: tuple[Path, str], sde: int,
               host_keys: dict[str, str], state: dict[str, Any],
               ks_paths: dict[str, Path], into: Path) -> dict[str, str]:
    """<into>/iso/<site>.iso (every host's kickstart) or <into>/iso/<host>.iso, a hard link
    to OUT's where unchanged; name -> key."""
    from builder.media import iso

    base, base_sha = media
    overlay = repr(sorted((str(p), p.read_bytes()) for p in _files_under(site.overlays / "iso"))
                   ) if site.overlays is not None and (site.overlays / "iso").is_dir() else ""
    groups = iso_outputs(site)
    keys = {}
    for name, host in groups.items():
        carried = [host_keys[host]] if host else sorted(host_keys.items())
        keys[name] = _key(base_sha, carried, overlay, sde, __version__)
        target, current = into / name, options.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if state.get("isos", {}).get(name) == keys[name] and _intact(
                current, state.get("outputs", {}), name):
            link_or_copy(current, target)
            continue
        options.report(f"iso: writing {current}")
        carried_names = [host] if host else list(ks_paths)
        rendered = {n: ks_paths[n].read_text(encoding="utf-8") for n in carried_names}
        iso.build_site_iso(site, base, target, host=host, progress=options.progress, epoch=sde,
                           rendered=rendered)
    return keys


@dataclass
class PxeStep:
    """The PXE tree's part of a build, decided before any kickstart is rendered (so that
    the tree's kickstarts are rendered in the same pass as ks/)."""
    key: str
    shared: str
    loader_files: list[Path]
    # None: the tree's inputs are unchanged (it is linked whole); else the base ISO (open),
    # the tree's plan and the hosts whose files in the live tree are current.
    plan: tuple[pxe_tree.BaseIso, pxe_tree.Plan] | None = None
    reuse: frozenset[str] = frozenset()
    # hostname -> what its boot entries depend on (its PXE kickstart aside), and the hosts
    # whose entries in the live tree are current (a changed timezone changes no entry).
    entry_keys: dict[str, str] = field(default_factory=dict)
    same_entries: frozenset[str] = frozenset()
    # Hosts of `reuse` whose PXE kickstart and install entries the new generation holds
    # already (from its spare).
    present_hosts: frozenset[str] = frozenset()
    # The base ISO and boot loaders are those OUT's tree copied (its shared inputs are).
    loaders_unchanged: bool = False

    def same_entry_hosts(self, installed: frozenset[str]) -> frozenset[str]:
        """Hosts whose install entries are taken from OUT's tree though their PXE kickstart
        is rendered again: the same entry key, not reused, not at local boot (`installed`:
        OUT has their local entries)."""
        return self.same_entries - self.reuse - installed

    def stale(self, site: Site) -> tuple[Host, ...]:
        """Hosts whose PXE kickstart must be rendered."""
        if self.plan is None:
            return ()
        return tuple(h for h in site.hosts if h.hostname not in self.reuse)


def plan_pxe(site: Site, options: Options, media: tuple[Path, str], keys: dict[str, str],
             state: dict[str, Any], intact: Intact, into: Path,
             held: contextlib.ExitStack) -> PxeStep:
    """`intact`: the previous build's outputs as it recorded them (intact_outputs)."""
    from builder.pxe import tree as pxe

    settings, _ = pxe.settings_of(site, None)
    loaders = pxe.find_bios_loaders(settings)
    # The site's own shim and GRUB too: the tree copies them, so a new file at the same path
    # must rebuild it (one that is missing is the tree writer's one-line error).
    given = [f for f in (settings.shim, settings.grub) if f is not None and f.is_file()]
    loader_files = [loaders.pxelinux, *loaders.modules.values(), *given]
    shared = pxe_shared_key(site, options, media, loader_files)
    step = PxeStep(_tree_key(shared, keys), shared, loader_files)
    if state.get("pxe") == step.key and (options.out / "pxe").is_dir() and _pxe_intact(
            options.out, state, intact):
        step.entry_keys = state.get("pxe_entries", {})
        return step  # linked whole: no file in it changed since it was recorded
    base = held.enter_context(pxe.BaseIso(media[0]))
    step.plan = (base, pxe.plan(_pxe_options(site, options, media, into / "pxe"), base))
    step.entry_keys = _entry_keys(shared, step.plan[1].hosts, keys, state)
    step.loaders_unchanged = state.get("pxe_shared") == shared
    if state.get("pxe_shared") == shared and "pxe/hosts.json" in intact:
        step.reuse = _unchanged(keys, state.get("hosts", {}), intact, _pxe_host_files(site))
        step.same_entries = _unchanged(step.entry_keys, state.get("pxe_entries", {}), intact,
                                       _pxe_entry_files(site))
    return step


def _tree_key(shared: str, keys: dict[str, str]) -> str:
    """What the whole PXE tree depends on: its `shared` inputs and every host's key, a line
    each (a hostname holds no space or newline, a key is hex), not the repr of 10,000 pairs
    (~20 ms)."""
    lines = "\n".join(map(" ".join, sorted(keys.items())))
    return hashlib.sha256(f"{shared}\n{lines}".encode()).hexdigest()


def _entry_keys(shared: str, hosts: Mapping[str, BootHost], keys: dict[str, str],
                state: dict[str, Any]) -> dict[str, str]:
    """hostname -> what its boot entries depend on: the tree's `shared` inputs and the host's
    plan. The last build's, for a host whose key (its model among others) is the same and
    `shared` too (a plan's repr costs 5 µs, times 10,000 hosts on every build; `hosts` makes
    a plan when asked for it)."""
    same = state.get("pxe_shared") == shared
    before, previous = state.get("hosts", {}), state.get("pxe_entries", {})
    return {name: previous[name] if same and name in previous and before.get(name) == keys[name]
            else _key(shared, repr(hosts[name])) for name in hosts}


def _pxe_intact(out: Path, state: dict[str, Any], intact: frozenset[str]) -> bool:
    """Every file of OUT's PXE tree is the one recorded (the tree does not depend on
    SOURCE_DATE_EPOCH: when it changed, `intact` is empty and the files are stat'ed)."""
    recorded = state["outputs"]
    names = [n for n in recorded if n.startswith("pxe/")]
    if intact:
        return intact.issuperset(names)
    return _outputs_intact(out, {n: recorded[n] for n in names})


def _pxe_host_files(site: Site) -> Callable[[str], list[str]]:
    """A host's files in the PXE tree (relative to OUT), which a rebuild links when the host
    is unchanged (its line of hosts.json is copied)."""
    entries = _pxe_entry_files(site)
    return lambda name: [f"pxe/http/ks/{name}.cfg", *entries(name)]


def _pxe_entry_files(site: Site) -> Callable[[str], list[str]]:
    """A host's boot entries in the PXE tree (relative to OUT)."""
    from builder.pxe.menus import host_files

    return lambda name: [f"pxe/{f}" for f in host_files(site.host(name).mac or "").values()]


def _pxe_options(site: Site, options: Options, media: tuple[Path, str], into: Path,
                 **more: Any) -> pxe_tree.Options:
    from builder.pxe import tree as pxe

    return pxe.Options(site=site, out=into, base=media[0], jobs=options.jobs,
                       previous=options.out / "pxe", served_as=_pxe_path(options),
                       compiled=options.out / TEMPLATE_CACHE, **more)


def build_pxe(site: Site, options: Options, media: tuple[Path, str], step: PxeStep,
              written: dict[str, str], previous_hash: Callable[[str], str | None],
              into: Path, held: contextlib.ExitStack, present: frozenset[str] = frozenset(),
              installed: frozenset[str] = frozenset(), started: pxe_tree.Started | None = None
              ) -> tuple[dict[str, str], frozenset[str], frozenset[str]]:
    """<into>/pxe: the PXE tree, rebuilt when what it carries changed, else a copy of OUT's
    made of hard links. Either way the live tree's lock (which `ksbuild serve` takes to
    switch a host that reports done) is taken before its installed hosts are read and
    stays held (`held`) until the new generation is in place, so no report is lost.
    `present`: the outputs `into` holds already (of its spare), decided while the hosts at
    local boot were `installed`; `started`: what start_pxe wrote of it; `written`: the
    sha256 of the tree's kickstarts the render workers wrote. Returns the sha256
    of the files written from memory (relative to `into`); those of `present` the writer
    found as they are to be, left so (OUT's files: a field of `defaults` changed leaves
    40,000 boot entries of a large fleet as they were); and the boot entries of hosts
    switched since `installed` was read: those of `present` are written again."""
    from builder.pxe import state as pxestate
    from builder.pxe import tree as pxe

    live = options.out / "pxe"
    lock = held.enter_context(pxestate.TreeLock(live))
    if step.plan is None:
        lock.acquire()
        switched = _switched(site, live, installed)  # linked from the live tree instead
        unlink_files([f"{into}/{name}" for name in switched & present])
        link_tree(live, into / "pxe", _in("pxe/", present - switched))
        return {}, frozenset(), switched
    options.report(f"pxe: writing {live}")
    if step.plan[1].settings.tree_path is None:
        options.report("pxe: pxe.tree_path is not set, so dnsmasq.conf and nginx.conf name "
                       f"{_pxe_path(options)}: set it to where the tree will be served from")
    result = pxe.write_tree(_pxe_options(site, options, media, into / "pxe",
                                         reuse_hosts=step.reuse, written=written,
                                         present=_in("pxe/", present),
                                         present_hosts=step.present_hosts,
                                         previous_hash=previous_hash),
                            lock, step.plan, started)
    # Under the lock (write_tree returns holding it): the writer carried the switches over.
    return ({f"pxe/{name}": sha for name, sha in result.hashes.items()},
            frozenset(f"pxe/{name}" for name in result.kept), _switched(site, live, installed))


def open_pxe_tree(site: Site, options: Options, media: tuple[Path, str] | None,
                  step: PxeStep | None, previous_hash: Callable[[str], str | None], into: Path,
                  present: frozenset[str], installed: frozenset[str] = frozenset()
                  ) -> tuple[pxe_tree.Options, pxe_tree.Writer] | None:
    """When the tree is rebuilt, its options and its writer (folders made), before any
    kickstart is rendered: the render workers write the tree's kickstarts with it. The
    entries of hosts whose entry key is the same (not those at local boot: OUT has their
    local entries) are taken from OUT's tree, not rendered again (_spared_entries)."""
    if media is None or step is None or step.plan is None:
        return None
    from builder.pxe import tree as pxe

    tree = _pxe_options(site, options, media, into / "pxe", reuse_hosts=step.reuse,
                        present=_in("pxe/", present), previous_hash=previous_hash,
                        loaders_unchanged=step.loaders_unchanged,
                        same_entry_hosts=step.same_entry_hosts(installed))
    return tree, pxe.open_writer(tree, step.plan[1])


def start_pxe(step: PxeStep | None, tree: tuple[pxe_tree.Options, pxe_tree.Writer] | None
              ) -> pxe_tree.Started | None:
    """What build_pxe writes that needs no kickstart (boot loaders, kernel, initrd, entries),
    when the tree is rebuilt (`tree`: open_pxe_tree's)."""
    if tree is None or step is None or step.plan is None:
        return None
    from builder.pxe import tree as pxe

    return pxe.start_tree(tree[0], *step.plan, tree[1])


def pxe_shared_key(site: Site, options: Options, media: tuple[Path, str],
                   loader_files: list[Path]) -> str:
    """What every host's PXE files depend on besides the host's own inputs (its key): the
    base media, the site's pxe: settings, the boot loaders, where the tree is served from."""
    # Not where pxe: is in the site file (origin, for messages): a line added above it
    # changes no output.
    settings = replace(site.pxe, origin="") if site.pxe is not None else None
    return _key(media[1], repr(settings), __version__,
                [_stat_key(f) for f in loader_files], str(_pxe_path(options)))


def _pxe_path(options: Options) -> Path:
    return (options.pxe_path or options.out / "pxe").absolute()


def _pxe_outputs(gen: Path) -> list[str]:
    """The PXE tree's files, relative to `gen`, less what changes at run time (which hosts
    have installed, under state/). Walked with strings: 60,000 files for a large fleet.
    Debris of an interrupted write is removed, not listed (_is_debris)."""
    names = []  # not sorted: _output_entries and _fill_spare sort what they need
    for folder, dirs, files in os.walk(gen / "pxe"):
        relative = os.path.relpath(folder, gen)
        if relative == "pxe":
            dirs[:] = [d for d in dirs if d != "state"]
        for name in files:
            if _is_debris(name):
                os.unlink(f"{folder}/{name}")
            else:
                names.append(f"{relative}/{name}")
    return names


def _is_debris(name: str) -> bool:
    """A temporary `.<name>.<random>.part` of output.write_bytes whose rename never came:
    `ksbuild serve` killed while it switched a host's entries in the live tree, which a later
    build takes back as its spare. (No output's name starts with a dot.)"""
    return name.startswith(".") and name.endswith(".part")


# ---------------------------------------------------------------------------------------------
# The spare: the generation replaced by the last build, pruned to the files it shares with the
# current one (output.Generations.switch). A build takes it as its new generation and keeps
# the outputs it would have linked from OUT's anyway (unchanged hosts); everything else is
# removed before anything is written, so the new generation is what it would be if it had
# been made from nothing. One host changed costs that host's files, not 60,000 links.


def _installed(out: Path, pxe_step: PxeStep | None) -> frozenset[str]:
    """The hosts at local boot in OUT's PXE tree, read before the tree's lock is taken (what
    switched since, build_pxe tells under it)."""
    if pxe_step is None:
        return frozenset()
    from builder.pxe import state as pxestate

    return frozenset(pxestate.installed(out / "pxe"))


def _kept_outputs(site: Site, state: dict[str, Any], unchanged: frozenset[str],
                  pxe_step: PxeStep | None, installed: frozenset[str]) -> frozenset[str]:
    """The outputs (relative to OUT) this build takes from OUT unchanged, through its spare
    (_relink_kept links in those the spare lacks): kickstarts of unchanged hosts, their PXE
    kickstarts and install entries (not those of hosts that have `installed`: switched to
    local boot), or the whole PXE tree when nothing in it changed. Notes in `pxe_step` the
    hosts all of whose PXE files are kept."""
    kept = {f"ks/{name}.cfg" for name in unchanged}
    if pxe_step is not None and pxe_step.plan is None:  # every file as recorded
        kept.update(n for n in state["outputs"] if n.startswith("pxe/"))
    elif pxe_step is not None:
        from builder.pxe.menus import hosts_files

        # A comprehension for each kind of name, not a list of names for each host: 50,000
        # names when one host of a large fleet changed.
        reused = list(pxe_step.reuse)
        live = [name for name in reused if name not in installed]
        kickstarts = [f"pxe/http/ks/{name}.cfg" for name in reused]
        macs = {host.hostname: host.mac or "" for host in site.hosts}
        entries = hosts_files([macs[name] for name in live], "pxe/")
        kept.update(kickstarts, entries)
        pxe_step.present_hosts = frozenset(live)
    return frozenset(kept)


def _relink_kept(out: Path, gen: Path, lacking: list[str]) -> None:
    """Hard links in the spare taken as `gen` to OUT's files of the kept outputs it `lacking`:
    those the last build wrote, when it was killed before it refilled its spare (the
    generation it replaced, pruned of them: _refill_replaced), all at once. After a field of
    `defaults` changed, 20,001 files of a large fleet: taken host by host, the next build
    that changed one host took 1.9 s instead of 0.8 s."""
    _link_outputs(_output_path(out), gen, lacking)


def _link_outputs(source: Callable[[str], str], into: Path, names: list[str],
                  threads: int = IO_THREADS) -> None:
    """A hard link at <into>/<name> to source(name) for each of `names` (relative), its
    folder made; a file there already is replaced."""
    for folder in sorted({os.path.dirname(name) for name in names}):
        os.makedirs(f"{into}/{folder}", exist_ok=True)
    link_new_files([(source(name), f"{into}/{name}") for name in names], threads)


def _spared_entries(site: Site, pxe_step: PxeStep | None, installed: frozenset[str]
                    ) -> frozenset[str]:
    """The boot entries (relative to OUT) of hosts whose PXE kickstart changed but whose
    entries did not (a field of `defaults` changed, say: PxeStep.same_entry_hosts): left in
    the spare, where the tree writer takes them as they are (tree Options.same_entry_hosts),
    rather than removed and linked again."""
    if pxe_step is None or pxe_step.plan is None:
        return frozenset()
    entries = _pxe_entry_files(site)
    return frozenset(name for host in pxe_step.same_entry_hosts(installed)
                     for name in entries(host))


def _switched(site: Site, live: Path, installed: frozenset[str]) -> frozenset[str]:
    """The boot entries (relative to OUT) of the site's hosts switched to or from local boot
    in the `live` tree since `installed` was read (by `ksbuild serve`, or `ksbuild pxe --done`
    or `--reinstall`). Read under the tree's lock: nothing switches while it is held."""
    from builder.pxe import state as pxestate

    entries, hosts = _pxe_entry_files(site), {host.hostname for host in site.hosts}
    return frozenset(name for host in (pxestate.installed(live) ^ installed) & hosts
                     for name in entries(host))


def _prune_spare(gen: Path, recorded: dict[str, Identity], kept: frozenset[str]) -> set[str]:
    """Remove from the spare taken as `gen` every output of OUT's generation but the `kept`
    ones (it holds no others), and the PXE tree's run-time state (carried over from OUT's
    afresh); the folders that held what was removed."""
    gone = [name for name in recorded if name not in kept]
    unlink_files([f"{gen}/{name}" for name in gone])
    remove_tree(gen / "pxe" / "state")
    return {os.path.dirname(name) for name in gone}


def _remove_empty(gen: Path, folders: set[str]) -> None:
    """Remove those of `folders` (relative to `gen`) that are empty, and their parents that
    are left empty: what pruning the spare emptied and the build did not fill again (no PXE
    tree any more, say) is not in a generation made from nothing either."""
    for folder in sorted(folders, key=len, reverse=True):
        while folder:
            try:
                os.rmdir(f"{gen}/{folder}")
            except OSError:
                break
            folder = os.path.dirname(folder)


def _refill_replaced(old: Path, gen: Path, changed: list[str], written: list[str],
                     trash: Trash) -> None:
    """The generation just replaced, made the spare of `gen`: pruned of what changed, then
    given links to what `gen` wrote, so that the spare holds every output of `gen`. Else the
    next build links those in (_relink_kept): after a field of `defaults` changed, the
    20,001 kickstarts of a large fleet, ~0.3 s of a build that changed one host."""
    _prune_replaced(old, changed, trash)
    _link_outputs(lambda name: f"{gen}/{name}", old, written)


def _prune_replaced(old: Path, changed: list[str], trash: Trash) -> None:
    """Prune the generation just replaced to the files it shares with the new one, to keep it
    as the spare: the `changed` outputs go, to the trash (their last names: unlinking them
    would free them here, trash.py), but ISOs (hundreds of MiB each: the trash would hold a
    second copy of a fleet's until a later build emptied it); so do the state (its keys, its
    table of outputs, the mark of a refilled spare) and the PXE tree's run-time state, and
    the temporary file of a write into it killed after it became current (_is_debris; the
    mark of a refilled spare was once written under one)."""
    isos = [name for name in changed if name.startswith("iso/")]
    trash.take(f"{old}/{name}" for name in changed if not name.startswith("iso/"))
    state = [STATE.name, KEYS.name, records.RECORDS, REFILLED.name]
    state += [name for name in os.listdir(old) if _is_debris(name)]
    unlink_files([f"{old}/{name}" for name in [*isos, *state]])
    remove_tree(old / "pxe" / "state")


def _prelink(gen: Path, spare: Path) -> dict[str, int]:
    """Hard links in `spare` to the kickstarts and PXE tree files `gen` holds so far (the
    tree's run-time state aside), made while the workers render: the name -> inode linked,
    for _fill_spare to keep those still the outputs' files. In this thread (the workers
    take both cores: more threads only cost more CPU), each inode as the folder lists it
    (d_ino, no stat): a file replaced since was linked with another inode, which
    _fill_spare finds is not the output's and links again."""
    inodes: dict[str, int] = {}
    folders = ["ks", "pxe"]
    while folders:
        relative = folders.pop()
        try:
            with os.scandir(f"{gen}/{relative}") as listed:
                entries = list(listed)  # listed before the workers add more (os.walk too)
        except OSError:
            continue
        os.makedirs(f"{spare}/{relative}", exist_ok=True)
        for entry in entries:
            name = f"{relative}/{entry.name}"
            if entry.is_dir():  # a link to a folder is neither followed nor linked
                if not entry.is_symlink() and name != "pxe/state":
                    folders.append(name)
                continue
            os.link(entry.path, f"{spare}/{name}")
            inodes[name] = entry.inode()
    return inodes


def _fill_spare(gen: Path, spare: Path, outputs: list[str], recorded: dict[str, Identity],
                prelinked: dict[str, int]) -> Path:
    """A spare made from nothing: a hard link to each of the `outputs` of `gen`, given their
    identities (`recorded`). Those `prelinked` (_prelink) that are still the output's file
    (its inode) stay; any other goes. In one thread, beside the build's own (more would
    take turns with it for the GIL, for the second core)."""
    stale = {name for name, inode in prelinked.items()
             if name not in recorded or recorded[name][2] != inode}
    unlink_files([f"{spare}/{name}" for name in sorted(stale)])
    missing = [name for name in outputs if name not in prelinked or name in stale]
    _link_outputs(lambda name: f"{gen}/{name}", spare, missing, threads=1)
    return spare


def _in(prefix: str, names: frozenset[str]) -> Callable[[str], bool]:
    """Whether `names` hold a name (relative to `prefix`)."""
    return lambda relative: prefix + relative in names


# ---------------------------------------------------------------------------------------------
# The whole flow.


def build(options: Options) -> Result:
    out = options.out
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: not a folder")
    # A first build checks its inputs before it makes OUT (for its lock): bad input leaves
    # nothing behind. Later ones check them under the lock, after the no-op check.
    checked = None if out.exists() else check_inputs(options, {})
    # Without the cyclic collector: it walked the site's model (millions of objects) again
    # and again while a 10,000-host build added its files' entries, ~0.3 s, to free ~2,000.
    with no_gc(), _output_lock(out, options.report):
        generations = Generations(out / CURRENT)
        generations.sweep()
        Generations(out / "pxe").sweep()  # and what `ksbuild pxe -o OUT/pxe` left
        sweep(out, (*OLD_DEBRIS, *LINK_DEBRIS))
        state = _read_state(out)
        if _quick_check(options, state):
            options.report("nothing changed since the last build: nothing to do")
            result = Result(out, True, state["source_date_epoch"], [],
                            len(state["records"].names) - 1)
            result.warnings = state["warnings"] if "warnings" in state else list(
                result.manifest.get("secure_boot", {}).get("warnings", []))  # older state
            return result
        state = _with_outputs(state)
        # The outputs stat'ed on the other core while the site is loaded.
        with _stats_begun(options, state) as stats:
            return _build(options, _with_keys(out, state), generations, checked, stats)


@contextlib.contextmanager
def _output_lock(out: Path, report: Report) -> Iterator[None]:
    """OUT/.ksbuild/lock, held by one build at a time: a second build into OUT waits (and
    says so) rather than mixing its outputs with the first one's."""
    path = out / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)  # the generations' PXE tree is served through it
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"another ksbuild build is writing {out}: waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _preflight(site: Site, options: Options, state: dict[str, Any]) -> tuple[Path, str] | None:
    """Every check that can fail on the inputs, before anything is written: the base media
    (a regular file, an ISO, not truncated) and what a PXE tree needs."""
    media = base_media(site, options, state)
    if media is not None:
        from builder.media.baseiso import read_base_head

        read_base_head(media[0])
        if site.outputs.pxe:
            from builder.pxe import tree as pxe

            pxe.preflight(site, None, _pxe_path(options))
    return media


@dataclass
class Checked:
    """The inputs, loaded and checked before anything is written."""
    site: Site
    media: tuple[Path, str] | None
    verdict: secureboot.Verdict | None


def check_inputs(options: Options, state: dict[str, Any]) -> Checked:
    from builder.site import load as load_site

    site = load_site(options.site, cache=options.out / SITE_CACHE)
    media = _preflight(site, options, state)
    # With secure_boot.policy: required, a revoked shim stops here.
    verdict = check_secure_boot(site, media) if media is not None else None
    return Checked(site, media, verdict)


def _build(options: Options, state: dict[str, Any], generations: Generations,
           checked: Checked | None, stats: Stats | None = None) -> Result:
    from builder import kickstart
    from builder.site import cache_data
    from builder.site import save_cache as save_site_cache
    from builder.trash import Trash

    out = options.out
    checked = checked or check_inputs(options, state)
    site, media, verdict = checked.site, checked.media, checked.verdict
    files = input_files(site)
    sde, origin = source_date_epoch([f for _, f, _ in files], options.source_date_epoch)
    options.report(f"SOURCE_DATE_EPOCH={sde} ({origin})")
    # The templates, and the site file's name (kickstarts carry it as site_name).
    shared = hashlib.sha256(repr([site.path.name] + [(k, str(f.relative_to(root)), f.read_bytes())
                                  for k, f, root in files if k == "template"]).encode()
                            ).hexdigest()
    inputs = [manifest.entry(kind, f, f.relative_to(root).as_posix())
              for kind, f, root in files]

    spare = generations.spare() if "changed" in state else None
    with generations.new(reuse=spare) as gen, contextlib.ExitStack() as held:
        keys = host_keys(site, shared)
        relink = state.get("source_date_epoch") == sde
        renderer = _early_renderer(site, keys, state.get("hosts", {}), stats, out)
        intact = intact_outputs(out, state, sde, stats)
        unchanged = _unchanged(keys, state.get("hosts", {}), intact, _ks_name)
        pxe_step = plan_pxe(site, options, media, keys, state, intact, gen, held) \
            if media is not None and site.outputs.pxe else None
        # Of the spare: what stays as it is, taken for OUT's file (kept), and what stays for
        # the writers to compare (spared, kept included).
        kept = spared = frozenset[str]()
        emptied: set[str] = set()
        installed = _installed(out, pxe_step)
        if spare is not None:
            # The spare does not share those with OUT's generation.
            unshared = frozenset(state["changed"])
            kept = _kept_outputs(site, state, unchanged, pxe_step, installed)
            spared = kept | _spared_entries(site, pxe_step, installed).difference(unshared)
            emptied = _prune_spare(gen, state["outputs"], spared)
            _relink_kept(out, gen, sorted(kept & unshared))
        known, previous = _known_hashes(state), state.get("outputs", {})
        # Each kickstart is written where it is rendered (by the workers, for a fleet).
        variants = {"ks": kickstart.Variant(
            tuple(h for h in site.hosts if h.hostname not in unchanged), output=kickstart_writer(
                options, sde, gen, relink, recorded_hash(out, "ks", known, previous)))}
        tree = open_pxe_tree(site, options, media, pxe_step, recorded_hash(
            out, "pxe", known, previous), gen, spared, installed)
        if tree is not None and pxe_step is not None and pxe_step.plan is not None:
            variants["pxe"] = pxe_step.plan[1].kickstarts(pxe_step.stale(site), tree[1])
        # The PXE tree's boot loaders and entries need no kickstart: written meanwhile (once).
        start = functools.cache(lambda: start_pxe(pxe_step, tree))
        # With no generation to replace and keep as the spare (a first build), one is filled
        # with links to this one's files: to those written so far, meanwhile too.
        fill = None if generations.keeps_replaced() else held.enter_context(generations.new())
        prelinked: dict[str, int] = {}
        pickled: list[bytes | None] = [None]
        trash = Trash(out / TRASH)

        def meanwhile() -> None:
            held.enter_context(trash.emptied_meanwhile())  # forks are done
            start()
            if fill is not None:
                prelinked.update(_prelink(gen, fill))
            pickled[0] = cache_data(site)  # the site cache, written once the build succeeded
        rendered = kickstart.render_variants(site, variants, jobs=options.jobs,
                                             meanwhile=meanwhile, compiled=out / TEMPLATE_CACHE,
                                             renderer=renderer)
        hashes = write_kickstarts(options, keys, unchanged, rendered["ks"], gen, kept)
        options.report(f"kickstarts: {len(hashes)} written, {len(keys) - len(hashes)} unchanged")
        names = [f"ks/{name}.cfg" for name in sorted(keys)]

        iso_keys: dict[str, str] = {}
        if media is not None:
            inputs.append(Entry("base-media", media[0].name, media[1], media[0].stat().st_size))
            if site.secure_boot.revocations is not None and verdict is not None:
                inputs.append(manifest.entry("revocations", site.secure_boot.revocations,
                                             site.secure_boot.revocations.name))
            if site.outputs.iso != "none":
                ks_paths = {name: gen / "ks" / f"{name}.cfg" for name in sorted(keys)}
                iso_keys = build_isos(site, options, media, sde, keys, state, ks_paths, gen)
                names += sorted(iso_keys)
            if pxe_step is not None:
                pxe_hashes, left, switched = build_pxe(
                    site, options, media, pxe_step, rendered.get("pxe", {}),
                    recorded_hash(out, "pxe", known, previous), gen, held, spared, installed,
                    start())
                hashes.update(pxe_hashes)
                # Switched: written again under the tree's lock, not OUT's files.
                kept = (kept | left) - switched
                inputs += [manifest.entry("boot-loader", f, f.name)
                           for f in pxe_step.loader_files]
                names += _pxe_outputs(gen)
        _remove_empty(gen, emptied)
        listed = _output_entries(gen, out, names, previous, known, hashes, kept)
        recorded, written = listed.recorded, listed.written
        # The spare's other links, meanwhile.
        filling = None if fill is None else _one_thread(held).submit(
            _fill_spare, gen, fill, names, recorded, prelinked)
        sections = {"secure_boot": verdict.record()} if verdict is not None else {}
        _write_manifest(gen, out, sde, inputs, listed, previous, sections)
        written.append(manifest.MANIFEST)
        listed.set(manifest.MANIFEST, _identity(gen / manifest.MANIFEST), "")  # no sha256
        # What the spare will not hold of this generation: it is the generation replaced,
        # pruned of those; or, with none to replace, filled with links to all of this one.
        changed = [] if filling else written + listed.gone
        new_state = _state(options, site, files, media, sde, keys, iso_keys, pxe_step, verdict)
        new_state["changed"] = changed  # what the spare will not hold
        keyed = {name: new_state.pop(name) for name in KEYED}
        write_bytes(gen / STATE.name, json.dumps(new_state).encode())  # not an output: unsorted
        write_bytes(gen / KEYS.name, json.dumps(keyed).encode())
        records.write(gen, recorded, list(listed.hashes.values()))
        refilled = []  # whether switch kept the replaced generation, refilled, as the spare

        def refill(old: Path) -> None:
            _refill_replaced(old, gen, changed, written, trash)
            refilled.append(old)
        generations.switch(gen, refill, filling.result() if filling else None)
        if refilled:  # created, not written under a temporary name: all it says is there
            (gen / REFILLED.name).touch()
        save_site_cache(site, out / SITE_CACHE, pickled[0])
        _link_entries(out, gen, generations)
    Generations(out / "pxe").sweep()  # a tree `ksbuild pxe -o OUT/pxe` wrote, now replaced
    return Result(out, False, sde, written, len(recorded) - 1,
                  verdict.warnings if verdict else [])


def _early_renderer(site: Site, keys: dict[str, str], before: dict[str, str],
                    stats: Stats | None, out: Path) -> kickstart.Renderer | None:
    """The renderer (pykickstart's parser, the templates: ~0.1 s) made while the Stats
    child stats the outputs on the other core, rather than after the wait (most of one
    changed host's rendering): when a host's key changed, as it is rendered whatever the
    stats find. None when there is no child to wait for, or no key changed."""
    if stats is None:
        return None
    # Renderer.prepare asks only whether more than one host changed: counted up to two.
    changed = len(list(itertools.islice(
        (name for name, key in keys.items() if before.get(name) != key), 2)))
    if not changed:
        return None
    from builder import kickstart

    return kickstart.Renderer(site, compiled=out / TEMPLATE_CACHE).prepare(changed)


def _one_thread(held: contextlib.ExitStack) -> ThreadPoolExecutor:
    """A thread for work done meanwhile (a first build's spare), joined when `held` closes."""
    from concurrent.futures import ThreadPoolExecutor  # with logging, ~10 ms: not every build's

    return held.enter_context(ThreadPoolExecutor(1))


def _known_hashes(state: dict[str, Any]) -> dict[str, str]:
    """The current outputs' sha256 as the last build recorded them: a file of the new
    generation that is the same (identity) file need not be hashed again (60,000 files for a
    large PXE fleet)."""
    table = state.get("records")
    return table.known() if table is not None else {}


class Listed:
    """A generation's outputs, as _output_entries found them: the last build's tables of its
    outputs (copied whole: not a row at a time, 60,000 rows for a large PXE fleet), with the
    rows of the outputs that differ changed."""

    def __init__(self, previous: dict[str, Identity], known: dict[str, str]) -> None:
        # name (relative to OUT) -> identity, and -> sha256: the same names in the same
        # order (records.write), kept so by changing them only together (set, drop).
        self.recorded, self.hashes = dict(previous), dict(known)
        # The manifest's rows of the outputs that are not OUT's files as the last build
        # recorded them: those the manifest may list otherwise than the last one did; and
        # those of the last build it lists no more.
        self.fresh: list[manifest.Row] = []
        self.gone: list[str] = []
        self.written: list[str] = []  # outputs that are not the file OUT has now

    def set(self, name: str, identity: Identity, sha: str) -> None:
        self.recorded[name], self.hashes[name] = identity, sha

    def drop(self, name: str) -> None:
        self.recorded.pop(name, None)
        self.hashes.pop(name, None)

    def rows(self, gen: Path) -> list[manifest.Row]:
        """The manifest's rows of all of them (a sha256 the last build did not record, read
        from the file): those `fresh` when they are all (a first build's 60,000 rows made
        once, not twice; the manifest sorts them)."""
        if len(self.fresh) == len(self.recorded):  # each name added once, none dropped since
            return self.fresh
        return [(_kind(name), name, sha or manifest.sha256_file(gen / name), identity[0])
                for (name, identity), sha in zip(self.recorded.items(), self.hashes.values())]


def _kind(name: str) -> str:
    """The manifest's kind of an output (relative to OUT)."""
    return KINDS[name.partition("/")[0]]


def _output_entries(gen: Path, out: Path, names: list[str], previous: dict[str, Identity],
                    known: dict[str, str], hashes: dict[str, str], kept: frozenset[str]
                    ) -> Listed:
    """The outputs (`names`, relative to OUT): each one's identity and sha256, which were
    written (not the file OUT has now), and which of the last build's are gone. The `kept`
    ones (taken from the spare) are OUT's files: their identity and sha256 are the ones
    recorded, taken over in bulk (60,000 of a large PXE fleet when one host changed). The
    others are stat'ed; a file's sha256 is the one of the bytes this build wrote it from,
    else the one recorded for the same file (identity) by the last build, else read from
    the file."""
    listed, present = Listed(previous, known), set(names)
    # The manifest too: this build's is recorded last.
    listed.gone = sorted(previous.keys() - present - {manifest.MANIFEST})
    for name in [*listed.gone, manifest.MANIFEST]:
        listed.drop(name)
    root = f"{gen}/"  # strings: 60,000 outputs for a large PXE fleet
    # None written where OUT has no such folder: 60,000 failed stats in a first build.
    tops = {name for name in ENTRIES if os.path.lexists(out / name)}

    def add(name: str) -> None:
        stat = os.stat(root + name)
        identity = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        sha = hashes.get(name) or (known.get(name) if previous.get(name) == identity else None)
        sha = sha or manifest.sha256_file(Path(root + name))
        listed.set(name, identity, sha)
        listed.fresh.append((_kind(name), name, sha, stat.st_size))
        if name.partition("/")[0] not in tops or _identity_or_none(f"{out}/{name}") != identity:
            listed.written.append(name)
    for name in sorted(present - kept):
        add(name)
    if len(listed.recorded) != len(present):  # kept, but not in the last build's tables
        for name in sorted(present.difference(listed.recorded)):
            add(name)
    return listed


# The manifest is written whole when more of its rows than this changed (a field of
# `defaults`, say): then splicing them into the last one's would cost more.
SPLICE_LIMIT = 256


def _write_manifest(gen: Path, out: Path, sde: int, inputs: Sequence[manifest.Row],
                    listed: Listed, previous: dict[str, Identity], sections: dict[str, Any]
                    ) -> None:
    """<gen>/manifest.json: OUT's with the rows that changed spliced in (manifest.update),
    if it is still the one the last build recorded (`previous`) and few rows changed (those
    `listed` as fresh, and the outputs `gone`); else written whole. The same bytes either
    way."""
    data = None
    if len(listed.fresh) + len(listed.gone) <= SPLICE_LIMIT and all(
            name.partition("/")[0] in KINDS for name in listed.gone):
        last = _recorded_bytes(f"{out}/{manifest.MANIFEST}", previous.get(manifest.MANIFEST))
        changes: dict[tuple[str, str], manifest.Row | None] = {
            (_kind(name), name): None for name in listed.gone}
        changes.update(((row[0], row[1]), row) for row in listed.fresh)
        if last is not None:
            data = manifest.update(last, __version__, sde, inputs, changes, sections)
    write_bytes(gen / manifest.MANIFEST, data or manifest.dumps(
        __version__, sde, inputs, listed.rows(gen), sections))


def _recorded_bytes(path: str, identity: Identity | None) -> bytes | None:
    """The file's bytes, if it is still the one recorded (`identity`)."""
    try:
        with open(path, "rb") as stream:
            stat = os.fstat(stream.fileno())
            if (stat.st_size, stat.st_mtime_ns, stat.st_ino) != identity:
                return None
            return stream.read()
    except OSError:
        return None


def _state(options: Options, site: Site, files: list[tuple[str, Path, Path]],
           media: tuple[Path, str] | None, sde: int, host_keys: dict[str, str],
           iso_keys: dict[str, str], pxe: PxeStep | None,
           verdict: secureboot.Verdict | None) -> dict[str, Any]:
    """What the next build needs to know about this one (in the generation it describes)."""
    from builder import kickstart

    env_names = {h.root_password_env for h in site.hosts if h.root_password_env}
    input_dirs = [(str(kickstart.template_dir().resolve()), TEMPLATES)]
    if site.overlays is not None:
        input_dirs.append((str(site.overlays), "*"))
    stats = [_stat_key(f) for _, f, _ in files]
    outside = [media[0]] if media else []  # files outside the input folders: media, loaders
    if pxe is not None:
        outside += pxe.loader_files
    if verdict is not None and site.secure_boot.revocations is not None:
        outside.append(site.secure_boot.revocations)
    stats_all = stats + [_stat_key(f) for f in outside]
    return {
        "ksbuild": __version__,
        "site": str(options.site.resolve()),
        "inputs": [s[0] for s in stats],
        "outside_inputs": [str(f) for f in outside],
        "input_dirs": input_dirs,
        "env": sorted(env_names),
        "fingerprint": _fingerprint(stats_all, _env_digest(env_names), _given_epoch(options)),
        "source_date_epoch": sde,
        "hosts": host_keys,
        "media": {"stat": _stat_key(media[0]), "sha256": media[1]} if media else {},
        "isos": iso_keys,
        "pxe": pxe.key if pxe is not None else None,
        "pxe_shared": pxe.shared if pxe is not None else None,
        "pxe_entries": pxe.entry_keys if pxe is not None else {},
        "warnings": verdict.warnings if verdict is not None else [],  # repeated by a no-op
    }


def _link_entries(out: Path, gen: Path, generations: Generations) -> None:
    """OUT/ks, iso, pxe and manifest.json: symlinks into the current generation, made once
    (what a build before generations left there is moved aside, and swept next time); one
    the generation has not (no PXE tree any more) is removed."""
    for name in ENTRIES:
        entry, target = out / name, (CURRENT / name).as_posix()
        if not (gen / name).exists():
            if entry.is_symlink():
                entry.unlink()
            continue
        if entry.is_symlink() and os.readlink(entry) == target:
            continue
        if entry.exists() and not entry.is_symlink():
            with generations.new() as aside:  # debris from now on
                os.replace(entry, aside / name)
        temp = out / LINK_TEMP.format(name)
        temp.unlink(missing_ok=True)
        os.symlink(target, temp)
        os.replace(temp, entry)


@dataclass(frozen=True)
class Comparison:
    path: str
    verdict: str  # "same", "different", "missing", "extra"
    offset: int | None = None  # first differing byte, for "different"


def verify(out: Path, report: Report = lambda line: None) -> list[Comparison]:
    """Rebuild from the recorded inputs into a temporary folder; compare every output."""
    import tempfile  # only verify needs it

    document = manifest.read(out)
    state = read_state(out)
    if not state:
        raise InputError(f"{out / STATE}: no build state; rebuild with `ksbuild build`")
    with tempfile.TemporaryDirectory(prefix="ksbuild-verify.") as tmp:
        again = build(Options(site=Path(state["site"]), out=Path(tmp) / "out",
                              source_date_epoch=int(document["source_date_epoch"]),
                              report=report, pxe_path=out / "pxe"))
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
