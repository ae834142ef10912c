"""Render one kickstart per host from the templates in kickstarts/, and validate each with
pykickstart's RHEL7 grammar (warnings are errors).

The templates hold the text; this module computes the values they need (quoted, hashed,
derived), so no logic lives in the templates beyond loops and conditions.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import operator
import os
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import jinja2.bccache
import jinja2.meta
from jinja2 import nodes
from jinja2.runtime import new_context

from builder import __version__, network, sitecache
from builder.errors import InputError, KsbuildError
from builder.ifcfg import anaconda_leftovers, ifcfg_files, network_lines
from builder.output import atomic_dir, remove, sweep
from builder.overlay import Overlay, OverlayTree
from builder.secrets import sha512_crypt
from builder.site import Host, Repo, Site

# The %post steps, in the order they run; each is kickstarts/post/<name>.sh.j2.
POST_SCRIPTS = ("hostname", "selinux", "firewall", "network", "sshkeys", "overlay", "repos",
                "firstboot", "pxe_done")
# Written by the repos step: the site's yum repos (stock files naming dead mirrors emptied).
REPO_FILE = "/etc/yum.repos.d/ksbuild.repo"
# Written by the sshkeys step when the site gives root_ssh_keys.
ROOT_AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"


def template_dir() -> Path:
    """The templates: KSBUILD_TEMPLATES when set, else kickstarts/ of the source tree, which
    installs as the package data builder.templates."""
    if "KSBUILD_TEMPLATES" in os.environ:
        return Path(os.environ["KSBUILD_TEMPLATES"])
    source = Path(__file__).resolve().parent.parent / "kickstarts"
    if source.is_dir():
        return source
    import importlib.resources  # only an installed package's (~2 ms at every start-up)

    return Path(str(importlib.resources.files("builder"))) / "templates"


def template_environment(folder: Path, compiled: Path | None = None) -> jinja2.Environment:
    """Jinja2 as every ksbuild template expects it: undefined names are errors, blocks leave
    no stray blank lines, and `| sh` quotes a value for the shell. `compiled`: a folder that
    keeps the templates compiled (CompiledTemplates)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # The templates do not change while it renders: no stat of a template's file each
        # time it is looked up (the firstboot step includes one, for every host).
        auto_reload=False,
        bytecode_cache=CompiledTemplates(compiled) if compiled is not None else None,
    )
    env.filters["sh"] = shlex.quote
    return env


class CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Jinja2's cache of compiled templates (`ksbuild build` keeps it in OUT/.ksbuild):
    compiling the ten templates was ~27 ms of every build that renders a kickstart, for one
    changed host most of the rendering (issue 16). Jinja2 takes a file only for the same
    template (name and path) and text (its sha1), and the same Python; the files are in a
    folder of their own for Jinja2's version and ksbuild's code (which sets the environment's
    options), so other code never reads them. Unreadable or damaged: compiled again, and
    rewritten. The cache only saves time: a folder or file that cannot be made is not used
    (`ksbuild iso` keeps it in the user's cache, where another ksbuild may sweep it away
    meanwhile)."""

    def __init__(self, root: Path) -> None:
        folder = self.folder(root)
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
        super().__init__(str(folder), "%s.jinja")

    @staticmethod
    def folder(root: Path) -> Path:
        code = f"{jinja2.__version__} {sitecache.code_digest()}"
        return root / hashlib.sha256(code.encode()).hexdigest()[:16]

    @staticmethod
    def sweep(root: Path) -> None:
        """Other code's folders, and the temporary files of writes that were killed (Jinja2
        writes a file as a .tmp, then renames it); before the renderers start."""
        own = CompiledTemplates.folder(root)
        with contextlib.suppress(OSError):
            for path in root.iterdir() if root.is_dir() else ():
                if path != own:
                    remove(path)
            sweep(own, ["*.tmp"])

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:  # noqa: BLE001 - damaged (Jinja2 lets a truncated pickle raise)
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def firstboot_bridges(host: Host) -> str:
    """The network the first-boot report expects: `name address|dhcp|none port,...` a line,
    for every bridge of the host (the legacy `bridge` keys and `network.bridges` alike)."""
    return "\n".join(f"{b.name} {b.address or ('dhcp' if b.dhcp else 'none')} "
                     f"{','.join(b.ports)}" for b in host.network.bridges())


def firstboot_gateway(host: Host) -> str:
    return next((str(d.gateway) for d in host.network.devices if d.gateway), "")


def root_password_hash(host: Host) -> str:
    if host.root_password_hash:
        return host.root_password_hash
    assert host.root_password_env is not None  # the loader requires one of the two
    password = os.environ.get(host.root_password_env)
    if not password:
        raise InputError(f"environment variable {host.root_password_env} is not set or empty")
    return sha512_crypt(password, host.salt_seed or host.hostname)


def _base64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode()
    return [text[i:i + 76] for i in range(0, len(text), 76)] or [""]


def managed_paths(host: Host) -> set[str]:
    """Files the %post steps write from the site's data; an overlay must not override them,
    or the installed host would silently disagree with its site file."""
    paths = {"/etc/hostname", "/etc/selinux/config", "/usr/local/sbin/ksbuild-firstboot",
             "/etc/systemd/system/ksbuild-firstboot.service", REPO_FILE}
    paths |= {f"/etc/sysconfig/network-scripts/{i.filename}" for i in ifcfg_files(host)}
    if host.root_ssh_keys:
        paths.add(ROOT_AUTHORIZED_KEYS)
    return paths


def host_repos(host: Host) -> list[Repo]:
    """The host's repos with `baseurl: source` made its install tree's URL."""
    repos = []
    for repo in host.repos:
        if repo.baseurl == "source":
            if host.source == "cdrom":
                raise InputError(f"host {host.hostname}: repo {repo.name}: `baseurl: source` "
                                 "needs an http(s) install source, and the host installs from "
                                 "cdrom; give the repo a URL")
            repo = replace(repo, baseurl=host.source)
        repos.append(repo)
    return repos


def _source_context(host: Host) -> dict[str, Any]:
    """What of a kickstart's context reads the host's install source (templates read it as
    host.source)."""
    return {"host": host, "repos": host_repos(host)}


# Host's fields but its install source, which pxe.install_tree: local replaces (PxeTree).
_FIELDS_BUT_SOURCE = tuple(item.name for item in fields(Host) if item.name != "source")


def _same_but_source(one: Host, other: Host) -> bool:
    """Whether two hosts hold the very same values (dataclasses.replace copies none) but
    their install source."""
    return all(getattr(one, name) is getattr(other, name) for name in _FIELDS_BUT_SOURCE)


def _refuse_managed_paths(host: Host, overlay: Overlay, root: Path | None) -> None:
    managed = managed_paths(host) if overlay.files else set()
    for item in overlay.files:
        if item.path in managed:
            raise InputError(f"{root}: overlay file {item.path} of {host.hostname} would "
                             "override what the site file sets; set it in the site file")


def __getattr__(name: str) -> Any:
    """kickstart.Validator, as before builder/ksvalidate.py: imported when first asked for,
    so that importing this module (every `ksbuild` command does) does not import pykickstart
    (~60 ms: a no-op build must stay well under 0.2 s)."""
    if name == "Validator":
        from builder.ksvalidate import Validator

        return Validator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What makes a template read more than the names it looks up: another template, blocks, the
# context itself.
_READS_ALL = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends, nodes.Block,
              nodes.ContextReference, nodes.DerivedContextReference)
_UNSET = object()


def template_reads(env: jinja2.Environment, name: str) -> tuple[str, ...] | None:
    """The values the template `name` looks up (sorted), or None where it may read any."""
    try:
        source, filename, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
        ast = env.parse(source, name, filename)
    except jinja2.TemplateError:
        return None
    if any(True for _ in ast.find_all(_READS_ALL)):
        return None
    return tuple(sorted(jinja2.meta.find_undeclared_variables(ast)))


@dataclass
class _Group:
    """What the kickstarts of one host rendered together (Renderer.together) share."""
    host: Host | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # %post step -> the values it read (the objects themselves) and its text
    posts: dict[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)


class Renderer:
    """Renders and validates kickstarts for one site. Templates, the overlay tree and the
    pykickstart parser are built once and reused for every host: a fleet of 10,000 hosts
    must not pay for them 10,000 times."""

    def __init__(self, site: Site, templates: Path | None = None,
                 compiled: Path | None = None) -> None:
        self.site = site
        self.env = template_environment(templates or template_dir(), compiled)
        self.overlays = OverlayTree(site.overlays)
        from builder.ksvalidate import Validator  # pykickstart: ~60 ms to import, only here

        self.validator = Validator()
        self._group: _Group | None = None
        self._groups = 0  # together() entered so far

    def prepare(self, hosts: int) -> Renderer:
        """The templates loaded now, not for the first kickstart rendered: a build makes its
        renderer while it waits for something else (build._early_renderer). What each %post
        step reads (~30 ms to find) only for more than one host: _post uses it from the
        second host on."""
        _ = self._main, self._posts
        if hosts > 1:
            _ = self._post_reads
        return self

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Render a host's kickstarts of several variants inside (they differ in a few
        values): the host's context is made once, a %post step that reads the same objects
        as before is not rendered again, and the validator remembers what the first parsed
        for the next (Validator.together)."""
        with self.validator.together():
            self._group = _Group()
            self._groups += 1
            try:
                yield
            finally:
                self._group = None

    @cached_property
    def _main(self) -> jinja2.Template:
        return self._template("host.ks.j2")

    @cached_property
    def _posts(self) -> dict[str, jinja2.Template]:
        return {name: self._template(f"post/{name}.sh.j2") for name in POST_SCRIPTS}

    def _template(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateError as exc:
            raise KsbuildError(f"template {name}: {exc}") from None

    @cached_property
    def _post_reads(self) -> dict[str, tuple[str, ...] | None]:
        return {name: template_reads(self.env, template.name or "")
                for name, template in self._posts.items()}

    def context(self, host: Host) -> dict[str, Any]:
        overlay = self.overlays.for_host(host.hostname)
        _refuse_managed_paths(host, overlay, self.site.overlays)
        files = ifcfg_files(host)
        return {
            "version": __version__,
            "site_name": self.site.path.name,
            "root_hash": root_password_hash(host),
            "network_lines": network_lines(host),
            "kernel_args": (*host.kernel_args, *network.kernel_args(host.nic_names)),
            "ifcfgs": files,
            "leftovers": anaconda_leftovers(host, files),
            "overlay": overlay,
            "b64": _base64_lines,
            "pxe_done_url": None,  # set by builder/pxe/tree.py for PXE installs
            "pxe_events_url": None,  # likewise: %pre, %onerror and the first-boot unit report
            "firstboot_bridges": firstboot_bridges(host),
            "firstboot_gateway": firstboot_gateway(host),
            **_source_context(host),
        }

    def _group_context(self, host: Host) -> dict[str, Any]:
        """context(host); inside together(), the last one's for the same host, or for the
        same host but for its install source (a PXE kickstart with pxe.install_tree: local:
        only _source_context is made again, and the %post steps that read neither of its
        values are not rendered again)."""
        group = self._group
        if group is None:
            return self.context(host)
        if group.host is not host:
            if group.host is not None and _same_but_source(group.host, host):
                group.context = {**group.context, **_source_context(host)}
            else:
                group.context, group.posts = self.context(host), {}
            group.host = host
        return group.context

    def render_host(self, host: Host, extra: Mapping[str, Any] | None = None) -> str:
        # The values every template of the kickstart reads, as Template.render makes them
        # (the globals, then the context), made once instead of twice for each of the ten.
        values = {**self.env.globals, **self._group_context(host), **(extra or {})}
        try:
            values["post_scripts"] = [(name, self._post(name, values)) for name in POST_SCRIPTS]
            text = render_shared(self._main, values)
        except jinja2.TemplateError as exc:
            raise KsbuildError(f"rendering the kickstart of {host.hostname}: {exc}") from None
        self.validator.validate(text, f"{host.hostname}.cfg")
        return text

    def _post(self, name: str, values: dict[str, Any]) -> str:
        """A %post step's text; inside together(), the last one's if the step read the same
        objects then (a template's text is a function of the values it reads). Not in the
        first host's group: what the steps read is found by parsing them again (~10 ms),
        more than rendering them again costs (one changed host's build renders one group)."""
        template, group = self._posts[name], self._group
        if group is None or self._groups < 2:
            return render_shared(template, values)
        reads = self._post_reads[name]
        if reads is None:
            return render_shared(template, values)
        used = tuple(values.get(key, _UNSET) for key in reads)
        found = group.posts.get(name)
        if found is not None and all(map(operator.is_, found[0], used)):
            return found[1]
        text = render_shared(template, values)
        group.posts[name] = (used, text)
        return text


def render_shared(template: jinja2.Template, values: dict[str, Any]) -> str:
    """template.render(values) where `values` holds the globals already: the context shares
    the dict (as jinja2's own {% include %} does) instead of copying it (3x as fast, for
    30,000 boot entries of a fleet); a template's {% set %} goes to the context's own
    variables, never into `values`. Made as Template.new_context makes it but for the set of
    the globals' names it keeps for {% import %} of the template, which ksbuild's never are:
    made from a ChainMap, that set took a quarter of a boot entry's time (0.35 -> 0.26 s,
    10,000 hosts' entries); a kickstart renders its main template and each %post step it
    does not reuse (Renderer._post)."""
    context = new_context(template.environment, template.name, template.blocks, values,
                          shared=True)
    try:
        return template.environment.concat(template.root_render_func(context))
    except Exception:
        template.environment.handle_exception()  # as render(): the template's lines in the trace
        raise  # not reached: handle_exception raises


# Below this many kickstarts a worker pool costs more than it saves.
PARALLEL_MIN_HOSTS = 200
# Hosts a worker takes at a time (~1 ms each), rendered, then written (_render_batch): when
# one worker has run out of hosts, the other finishes its last batch alone, on one core
# (625 at a time for 10,000 hosts: 0.06-0.24 s measured; 32: 0.01-0.04 s, for ~300 round
# trips of a few names and hashes).
CHUNK_MAX = 32
# More template values for one host (e.g. builder/pxe/tree.py's done URL), on top of context().
ExtraFor = Callable[[Host], Mapping[str, Any]]


@dataclass(frozen=True)
class Variant:
    """One kind of kickstart of a host: the plain one (ks/), or the PXE tree's, which installs
    the host as `installs` makes it (the install tree as its source) with `extra` values (the
    done and events URLs)."""
    hosts: tuple[Host, ...]  # the hosts to render this variant for
    extra: ExtraFor | None = None
    installs: Callable[[Host], Host] | None = None
    # What becomes of a host's text where it is rendered (a worker: writes its file), which
    # render_variants returns instead of the text: 10,000 texts of ~10 KB need not travel
    # back to be hashed and written by the one process while the workers wait or idle.
    output: Callable[[Host, str], Any] | None = None

    def render(self, renderer: Renderer, host: Host) -> str:
        installed = self.installs(host) if self.installs else host
        return renderer.render_host(installed, self.extra(host) if self.extra else None)

    def made(self, host: Host, text: str) -> Any:
        """What render_variants returns for the host's text: `output`'s result, or the text."""
        return self.output(host, text) if self.output is not None else text


_worker: Renderer | None = None
_variants: Mapping[str, Variant] = {}


def _start_worker(site: Site, variants: Mapping[str, Variant], compiled: Path | None,
                  renderer: Renderer | None) -> None:
    global _worker, _variants
    # pykickstart looks up its message catalog on disk for every option's help text; with
    # LANGUAGE=C that lookup ends at once (ksbuild's messages are English anyway).
    os.environ["LANGUAGE"] = "C"
    # What the worker inherited (the site's model: millions of objects) is never garbage
    # here; the collector would walk it again and again (~4% of a worker's CPU measured,
    # where the caller has not turned it off as a build does).
    gc.freeze()
    _worker = renderer or Renderer(site, compiled=compiled)  # the caller's: forked, a copy
    _variants = variants


def _render_together(renderer: Renderer, chosen: list[tuple[Variant, Host]]) -> list[str]:
    """A host's kickstarts of several variants, one after the other (Renderer.together):
    they differ in a few values and lines, so most of the second's rendering is the first's,
    and the validator finds what the first parsed remembered, the host's own network lines
    too (which no other host has: a third of a parse)."""
    with renderer.together():
        return [variant.render(renderer, host) for variant, host in chosen]


def _render_batch(renderer: Renderer, batch: list[list[tuple[Variant, Host]]]
                  ) -> list[list[Any]]:
    """Each host's kickstarts (_render_together), then what the variants make of them
    (Variant.made: the workers write them), one after the other: a file written after a
    kickstart's ~1 ms of parsing found the kernel's code and data out of the caches and
    cost twice the CPU of one written right after another (sha256, write, utime: 0.11
    against 0.05 ms a file, measured between validations), and the workers' writes
    interleaved with each other's and the main process's in the same folders."""
    texts = [_render_together(renderer, chosen) for chosen in batch]
    return [[variant.made(host, text) for (variant, host), text in zip(chosen, host_texts)]
            for chosen, host_texts in zip(batch, texts)]


def _render_in_worker(tasks: list[tuple[str, tuple[str, ...]]]) -> list[list[Any]]:
    assert _worker is not None
    site = _worker.site
    return _render_batch(_worker, [[(_variants[name], site.host(hostname)) for name in names]
                                   for hostname, names in tasks])


def render_variants(site: Site, variants: Mapping[str, Variant], jobs: int | None = None,
                    meanwhile: Callable[[], object] = lambda: None,
                    compiled: Path | None = None, renderer: Renderer | None = None
                    ) -> dict[str, dict[str, Any]]:
    """variant -> hostname -> validated kickstart text (or what the variant's `output` made
    of it), sorted by hostname: every variant of
    every host in one pass (one pool: a host whose plain and PXE kickstarts are both due is
    not forked for twice), a host's variants rendered together (_render_together).

    A large fleet is spread over worker processes (pykickstart is pure Python: ~1.5 ms a
    kickstart, so 10,000 hosts need every core). Workers are forked: they inherit the site
    and the variants (any callables); only names go to them and texts come back.
    `meanwhile`: work of the caller's that needs no text, done while the workers render
    (after they are forked, so it may start threads). `compiled`: a folder for the compiled
    templates (CompiledTemplates). `renderer`: one made already (Renderer.prepare), used
    rather than a new one (copied into each worker)."""
    by_host: dict[str, list[tuple[str, Host]]] = {}
    for name, variant in variants.items():
        for host in variant.hosts:
            by_host.setdefault(host.hostname, []).append((name, host))
    hostnames = sorted(by_host)
    count = sum(len(chosen) for chosen in by_host.values())
    if compiled is not None:
        CompiledTemplates.sweep(compiled)
    jobs = jobs or os.cpu_count() or 1
    texts: list[list[Any]]
    if jobs == 1 or count < PARALLEL_MIN_HOSTS:
        meanwhile()
        renderer = renderer or Renderer(site, compiled=compiled)
        chosen = [[(variants[name], host) for name, host in by_host[hostname]]
                  for hostname in hostnames]
        texts = [made for batch in _batches(chosen, CHUNK_MAX)
                 for made in _render_batch(renderer, batch)]
    else:
        tasks = [(hostname, tuple(name for name, _ in by_host[hostname]))
                 for hostname in hostnames]
        size = max(1, min(len(tasks) // (jobs * 8), CHUNK_MAX))
        import multiprocessing  # here: ~5 ms to import, for a fleet only

        context = multiprocessing.get_context("fork")
        with context.Pool(jobs, initializer=_start_worker,
                          initargs=(site, variants, compiled, renderer)) as pool:
            pending = pool.map_async(_render_in_worker, _batches(tasks, size), chunksize=1)
            meanwhile()
            texts = [made for batch in pending.get() for made in batch]
    rendered: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for hostname, host_texts in zip(hostnames, texts):
        for (name, _), text in zip(by_host[hostname], host_texts):
            rendered[name][hostname] = text
    return rendered


T = TypeVar("T")


def _batches(items: list[T], size: int) -> list[list[T]]:
    """`items` in consecutive slices of `size` (the last may be shorter)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


def render_site(site: Site, hosts: tuple[Host, ...] | None = None,
                jobs: int | None = None, extra: ExtraFor | None = None,
                compiled: Path | None = None) -> dict[str, str]:
    """hostname -> validated kickstart text, for every host (or those given), sorted.
    `compiled`: a folder for the compiled templates (CompiledTemplates)."""
    variant = Variant(site.hosts if hosts is None else hosts, extra)
    return render_variants(site, {"ks": variant}, jobs, compiled=compiled)["ks"]


def write_kickstarts(site: Site, folder: Path) -> list[Path]:
    """Render and validate everything first, then replace `folder` in one step."""
    rendered = render_site(site)
    with atomic_dir(folder) as temp:
        for hostname, text in rendered.items():
            (temp / f"{hostname}.cfg").write_text(text, encoding="utf-8")
            os.chmod(temp / f"{hostname}.cfg", 0o644)
    return [folder / f"{hostname}.cfg" for hostname in rendered]
