"""The command line: the only place that prints and turns errors into exit codes.

Exit codes: 0 ok, 1 a build failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from builder import __version__
from builder.errors import KsbuildError
from builder.gcpause import no_gc

if TYPE_CHECKING:
    from builder.progress import Progress

Handler = Callable[[argparse.Namespace], int]


def say(message: str) -> None:
    print(message, file=sys.stderr)


def warn(lines: list[str]) -> None:
    """Warnings the user must see before the machines do (printed even with --quiet)."""
    for line in lines:
        say(f"ksbuild: warning: {line}")


# ---------------------------------------------------------------------------------------------
# Subcommands. Each takes the parsed arguments and returns an exit code; heavy imports stay
# inside so `ksbuild --help` is instant.


def cmd_render(args: argparse.Namespace) -> int:
    from builder import kickstart, site

    loaded = site.load(args.site)
    written = kickstart.write_kickstarts(loaded, args.output / "ks")
    say(f"wrote {len(written)} kickstart(s) to {args.output / 'ks'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from builder import kickstart, site

    loaded = site.load(args.site)
    rendered = kickstart.render_site(loaded)
    say(f"{args.site}: {len(rendered)} host(s), every kickstart valid")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from builder import progress, site
    from builder.errors import InputError
    from builder.media import fetch

    def write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    shown = progress.TextProgress(write, tty=sys.stderr.isatty())
    options = fetch.FetchOptions(retries=args.retries)
    if args.site is not None:
        if args.release or args.flavor or args.url or args.sha256:
            raise InputError("give a site file or --release/--flavor/--url, not both")
        media = site.load(args.site).media
        if media is None:
            raise InputError(f"{args.site}: no `media:` key to fetch "
                             "(e.g. media: {release: 7.9.2009, flavor: DVD})")
    else:
        media = fetch.media_from_options(args.release, args.flavor, args.url, args.sha256)
    if args.pxeboot:
        if media.release is None:
            raise InputError("--pxeboot needs a release (--release or media.release)")
        tree = fetch.tree_url(fetch.choose_mirror(args.mirror, media), media.release)
        files = fetch.fetch_pxeboot(tree, cache_dir=args.cache_dir, progress=shown,
                                    options=options,
                                    iso=fetch.verified_release_iso(media, args.cache_dir))
        print(f"{files.vmlinuz}\n{files.initrd}\n{files.treeinfo}")
        return 0
    iso = fetch.resolve_media(media, cache_dir=args.cache_dir, mirror=args.mirror,
                              progress=shown, options=options)
    print(iso)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import json

    from builder import build

    progress_tty = sys.stderr.isatty() and not args.quiet
    report = (lambda line: None) if args.quiet else say
    result = build.build(build.Options(
        site=args.site, out=args.output, jobs=args.jobs, cache_dir=args.cache_dir,
        mirror=args.mirror, report=report, progress=_progress(progress_tty)))
    warn(result.warnings)
    if args.json:
        summary = {"out": str(result.out), "up_to_date": result.up_to_date,
                   "written": result.written, **result.manifest}
        print(json.dumps(summary, indent=2, sort_keys=True))
    elif not args.quiet:
        say(f"{result.outputs} output(s) in {result.out}, "
            f"{len(result.written)} written; manifest: {result.out / 'manifest.json'}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from builder import build

    results = build.verify(args.output, report=(lambda line: None))
    for item in results:
        where = f" at byte {item.offset}" if item.offset is not None else ""
        print(f"{item.verdict:9} {item.path}{where}")
    bad = [r for r in results if r.verdict != "same"]
    say(f"{len(results) - len(bad)} same, {len(bad)} not the same")
    return 1 if bad else 0


def _progress(show: bool) -> Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    from builder.progress import Silent, TextProgress

    if not show:
        return Silent()
    return TextProgress(lambda text: print(text, end="", file=sys.stderr, flush=True), tty=True)


def cmd_iso(args: argparse.Namespace) -> int:
    # No cyclic garbage collection while it runs: ~110 young collections over the base's
    # tree and the kickstart's parsers, ~15 ms of a run; what they would free lives until the
    # end anyway (the peak memory of a 1 GiB, 1000-file base's repack stays 54 MiB).
    with no_gc():
        return _iso(args)


def _iso(args: argparse.Namespace) -> int:
    from builder import secureboot, site
    from builder.errors import InputError
    from builder.media import iso
    from builder.progress import human_bytes

    loaded = site.load(args.site)
    if args.timeout < 0:
        raise InputError(f"--timeout {args.timeout}: give the seconds the menu waits (0 or more)")
    shown = _progress(sys.stderr.isatty())
    output = args.output
    if output is None:
        name = loaded.host(args.host).hostname if args.host else args.site.stem
        output = Path("out") / f"{name}.iso"
    if args.base is not None:
        iso.check_output(args.base, output)  # before any work: not a folder, not the base
    elif output.is_dir():
        iso.check_output(output, output)
    base = args.base
    if base is None:
        from builder.media import fetch

        if loaded.media is None:
            raise InputError(f"{args.site}: give --base ISO, or name the base media in the "
                             "site file (media: {release: 7.9.2009, flavor: DVD})")
        base = fetch.resolve_media(loaded.media, progress=shown)
    verdict = secureboot.check_outputs(loaded, base, [str(output)], None)
    result = iso.build_site_iso(loaded, base, output, host=args.host, volid=args.volid,
                                timeout=args.timeout, keep_media_check=args.keep_media_check,
                                progress=shown, compiled=_template_cache())
    say(f"wrote {result.output} ({human_bytes(result.size)}): volume ID {result.volid!r}, "
        f"base {result.flavor.name} {result.flavor.release}, media MD5 {result.md5}")
    warn(verdict.warnings)
    if not args.host and len(loaded.hosts) > 1:
        unpicked = [h.hostname for h in loaded.hosts if not h.mac]
        say(f"{len(loaded.hosts)} hosts: each machine's kickstart is picked by its MAC"
            + (f"; without a mac ({', '.join(unpicked)}): edit the boot line to "
               "inst.ks=hd:LABEL=<label>:/ks/<hostname>.cfg, or use --host" if unpicked else ""))
    return 0


def _template_cache() -> Path | None:
    """The user's cache of compiled templates ($XDG_CACHE_HOME/ksbuild/templates; None
    without a home folder): `ksbuild iso` has no output folder of its own to keep them in, as
    `ksbuild build` has (OUT/.ksbuild); compiling them was ~60 ms of CPU of every `ksbuild
    iso`, a fifth of its fixed cost (issue 16)."""
    from builder.cachedir import default_cache_dir

    try:
        return default_cache_dir() / "templates"
    except RuntimeError:  # Path.home(): no HOME, and no passwd entry
        return None


def cmd_boot(args: argparse.Namespace) -> int:
    from builder.media import boot

    options = boot.BootOptions(iso=args.iso, uefi=args.uefi, usb=args.usb, disk=args.disk,
                               memory_mib=args.memory, network=not args.no_network,
                               console=args.console, kvm=False if args.no_kvm else None,
                               secure_boot=args.secure_boot or bool(args.dbx_hash),
                               dbx_hashes=tuple(args.dbx_hash))
    return boot.boot(options, note=say)


def cmd_pxe(args: argparse.Namespace) -> int:
    from builder import secureboot, site
    from builder.errors import InputError
    from builder.pxe import tree as pxe

    if args.site is None:
        if args.base or args.server:
            raise InputError("--base and --server go with a site file (building a tree)")
        if not (args.done or args.reinstall or args.done_log):
            raise InputError("give a site file to build a tree, or --done/--reinstall HOST "
                             "or --done-log FILE to switch hosts of the tree at -o")
        tree = pxe.require_tree(args.output)
        lines = pxe.switch(tree, args.done, args.reinstall, note="by hand")
        if args.done_log:
            lines += pxe.apply_done_log(tree, args.done_log)
        for line in lines:
            say(line)
        return 0
    if args.done or args.done_log:
        raise InputError("--done and --done-log switch hosts of an existing tree: "
                         "ksbuild pxe -o TREE --done HOST (without a site file)")
    loaded = site.load(args.site)
    base = args.base
    if base is None:
        from builder.media import fetch

        if loaded.media is None:
            raise InputError(f"{args.site}: give --base ISO, or name the base media in the "
                             "site file (media: {release: 7.9.2009, flavor: DVD})")
        base = fetch.resolve_media(loaded.media, progress=_progress(sys.stderr.isatty()))
    verdict = secureboot.check_outputs(loaded, base, [], str(args.output))
    result = pxe.build_tree(pxe.Options(loaded, args.output, base, server=args.server,
                                        reinstall=tuple(args.reinstall), jobs=args.jobs))
    say(f"wrote the PXE tree {result.out}: {result.hosts} host(s), "
        f"{len(result.installed)} installed (local boot), GRUB {result.grub_commands}")
    published = result.install_tree
    if published is not None:
        say(f"install tree http/{published.folder}/: {published.files} files, "
            f"{published.size >> 20} MiB; copied {published.copied} "
            f"({published.copied_bytes >> 20} MiB), kept {published.kept}; "
            f"{published.packages} packages verified by size, {published.packages_hashed} by "
            "checksum")
    for name in result.reinstalled:
        say(f"{name}: installs again on its next network boot")
    for note in result.notes:
        say(note)
    warn(verdict.warnings)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from builder.pxe import serve

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    from builder.pxe import installlog

    log_address = installlog.parse_address(args.syslog) if args.syslog else None
    server = serve.start(args.tree, args.listen, say)
    say(f"serving {args.tree} on {serve.url_of(server)} (Ctrl-C stops)")
    receiver = None
    if log_address is not None:
        try:
            receiver = installlog.start(log_address, server.app.fleet, say)
        except OSError as exc:
            server.server_close()
            raise KsbuildError(f"--syslog {args.syslog}: cannot listen: "
                               f"{exc.strerror or exc}") from None
        say(f"taking installer logs (inst.syslog=) on port {receiver.port}")
    follower = None
    if args.tftp_log is not None:
        from builder.pxe import bootlog

        follower = bootlog.start(args.tftp_log, server.app.fleet, say)
        say(f"following dnsmasq's TFTP log {args.tftp_log}")
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        # Closing takes serve.STOP_GRACE seconds at most; a second Ctrl-C must not cut it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if receiver is not None:
            receiver.stop()
        if follower is not None:
            follower.stop()
        server.server_close()  # waits for the requests in flight
    say("ksbuild serve: stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from builder.errors import InputError
    from builder.pxe import events, statusview
    from builder.pxe import tree as pxe

    if args.watch is not None and args.watch <= 0:
        raise InputError(f"--watch {args.watch}: give the seconds between updates (more than 0)")
    tree = pxe.require_tree(args.tree)

    def summary() -> dict[str, object]:
        return events.summary(events.load_fleet(tree), time.time())

    if args.json:
        print(json.dumps(summary(), indent=None if args.watch else 2, sort_keys=True),
              flush=True)
        while args.watch:
            time.sleep(args.watch)
            print(json.dumps(summary(), sort_keys=True), flush=True)
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a file or a pipe: whole lines, not 80 columns
    if args.watch is None:
        console.print(statusview.view(summary()))
        return 0
    with Live(statusview.view(summary()), console=console, auto_refresh=False,
              screen=False) as live:
        while True:
            time.sleep(args.watch)
            live.update(statusview.view(summary()), refresh=True)


def cmd_schema(args: argparse.Namespace) -> int:
    from builder import site

    sys.stdout.write(site.schema_text())
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from builder import secrets

    password = getpass.getpass("root password: ")
    if password != getpass.getpass("again: "):
        say("ksbuild: the two passwords differ")
        return 2
    print(secrets.sha512_crypt_random(password))
    return 0


def jobs(text: str) -> int:
    """-j: a number of worker processes, 1 to 1024 (argparse says so in one line, exit 2)."""
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to 1024 worker processes")
    return int(text)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line and exit 2, like every other bad input
    (argparse's own error() prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ksbuild",
        description="CentOS 7 KVM-host kickstarts, install ISOs and PXE trees from a site file.",
    )
    parser.add_argument("--version", action="version", version=f"ksbuild {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    render = sub.add_parser("render", help="write one kickstart per host",
                            description="Validate the site and write OUT/ks/<hostname>.cfg.")
    render.add_argument("site", type=Path, help="the site file (YAML)")
    render.add_argument("-o", "--output", type=Path, default=Path("out"),
                        help="output folder (default: out)")
    render.set_defaults(handler=cmd_render)

    check = sub.add_parser("check", help="validate the site and every kickstart; write nothing",
                           description="Validate the site file and every kickstart it renders.")
    check.add_argument("site", type=Path, help="the site file (YAML)")
    check.set_defaults(handler=cmd_check)

    build = sub.add_parser("build", help="build everything the site asks for, with a manifest",
                           description="Validate the site, fetch or take the base media, "
                                       "render the kickstarts, build the ISO(s) and the PXE "
                                       "tree the site's `outputs` ask for, and write "
                                       "OUT/manifest.json. Unchanged inputs: no work.")
    build.add_argument("site", type=Path, help="the site file (YAML)")
    build.add_argument("-o", "--output", type=Path, default=Path("out"),
                       help="output folder (default: out)")
    build.add_argument("-j", "--jobs", type=jobs, default=None,
                       help="worker processes for large fleets (default: one per core)")
    build.add_argument("--cache-dir", type=Path, default=None,
                       help="download cache (default: $XDG_CACHE_HOME/ksbuild)")
    build.add_argument("--mirror", default=None,
                       help="CentOS mirror base URL (default: site, KSBUILD_MIRROR, vault)")
    build.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    build.add_argument("--json", action="store_true",
                       help="print the manifest summary as JSON on stdout")
    build.set_defaults(handler=cmd_build)

    verify = sub.add_parser("verify", help="rebuild from the recorded inputs and compare",
                            description="Rebuild OUT's outputs in a temporary folder from the "
                                        "inputs its manifest records; report each output as "
                                        "same or different (exit 0 or 1).")
    verify.add_argument("output", type=Path, help="a folder written by `ksbuild build`")
    verify.set_defaults(handler=cmd_verify)

    schema = sub.add_parser("schema", help="print the site file's JSON Schema",
                            description="Print the JSON Schema of the site file (for editors).")
    schema.set_defaults(handler=cmd_schema)

    hash_pw = sub.add_parser("hash-password", help="read a password, print its SHA-512 crypt",
                             description="Prompt for a root password and print the "
                                         "root_password_hash value for a site file.")
    hash_pw.set_defaults(handler=cmd_hash_password)

    fetch = sub.add_parser(
        "fetch", help="download and verify the base ISO into the cache; print its path",
        description="Fetch the base media a site file names (media:), or the one given by "
                    "--release/--flavor or --url/--sha256, into the cache (verified by sha256, "
                    "resumed after a break). Prints the local path. Mirror: --mirror, else "
                    "$KSBUILD_MIRROR, else the site's media.mirror, else the CentOS vault.")
    fetch.add_argument("site", type=Path, nargs="?", help="the site file (YAML)")
    fetch.add_argument("--release", help="CentOS release (default 7.9.2009)")
    fetch.add_argument("--flavor", help="NetInstall, Minimal, DVD (default) or Everything")
    fetch.add_argument("--url", help="an ISO's URL instead of a release (needs --sha256)")
    fetch.add_argument("--sha256", help="the expected sha256; wins over published sums")
    fetch.add_argument("--mirror", help="mirror base URL (default https://vault.centos.org/)")
    fetch.add_argument("--cache-dir", type=Path,
                       help="cache folder (default $XDG_CACHE_HOME/ksbuild or ~/.cache/ksbuild)")
    fetch.add_argument("--retries", type=int, default=4, choices=range(0, 21), metavar="N",
                       help="attempts after a failed one, with growing pauses (default 4)")
    fetch.add_argument("--pxeboot", action="store_true",
                       help="fetch the release's PXE kernel, initrd and .treeinfo instead")
    fetch.set_defaults(handler=cmd_fetch)

    iso = sub.add_parser(
        "iso", help="repack a CentOS 7 ISO so it installs the site's host(s) unattended",
        description="Repack the base ISO (--base, else the site's media:) with the kickstart at "
                    "/ks.cfg, the site's overlays/iso/ files, inst.ks= on every installer boot "
                    "entry (BIOS and UEFI), the install entry as default and the media checksum "
                    "implanted again. One host: its kickstart. Several: every host's, picked by "
                    "MAC at install time; or one host's with --host. Reproducible with "
                    "SOURCE_DATE_EPOCH.")
    iso.add_argument("site", type=Path, help="the site file (YAML)")
    iso.add_argument("--base", type=Path, help="the official CentOS 7 ISO to start from")
    iso.add_argument("-o", "--output", type=Path,
                     help="the ISO to write (default: out/<site or host name>.iso)")
    iso.add_argument("--host", help="only this host's kickstart (a per-host ISO)")
    iso.add_argument("--volid", help="a new volume ID (at most 16 characters with Joliet)")
    iso.add_argument("--timeout", type=int, default=5,
                     help="seconds the boot menus wait before the default entry (default 5)")
    iso.add_argument("--keep-media-check", action="store_true",
                     help="default to 'Test this media & install' (checks the MD5 first)")
    iso.set_defaults(handler=cmd_iso)

    boot = sub.add_parser(
        "boot", help="try an ISO in QEMU with a blank disk",
        description="Boot the ISO in QEMU (SeaBIOS, or OVMF with --uefi) as a CD, or as a USB "
                    "stick with --usb, with a blank 20 GiB disk (sda) that boots first once the "
                    "installer has written it.")
    boot.add_argument("iso", type=Path, help="the ISO to boot")
    boot.add_argument("--uefi", action="store_true", help="UEFI firmware (OVMF)")
    boot.add_argument("--usb", action="store_true", help="attach the ISO as a USB stick")
    boot.add_argument("--disk", type=Path,
                      help="keep the disk in this raw file (default: a temporary one)")
    boot.add_argument("--memory", type=int, default=2048, help="guest memory in MiB")
    boot.add_argument("--no-network", action="store_true", help="no network card")
    boot.add_argument("--console", action="store_true",
                      help="the guest's serial port on this terminal instead of a window")
    boot.add_argument("--no-kvm", action="store_true",
                      help="emulate the CPU even when /dev/kvm is there (slow; for hosts "
                           "whose nested KVM fails)")
    boot.add_argument("--secure-boot", action="store_true",
                      help="UEFI with Secure Boot on and Microsoft's keys, as PC firmware ships "
                           "(OVMF_CODE_4M.secboot.fd + a copy of OVMF_VARS_4M.ms.fd): see "
                           "whether the firmware starts the ISO's shim")
    boot.add_argument("--dbx-hash", action="append", default=[], metavar="SHA256",
                      help="with --secure-boot: revoke this Authenticode SHA-256 in the "
                           "firmware's dbx first, as an updated dbx would (needs virt-fw-vars; "
                           "repeatable)")
    boot.set_defaults(handler=cmd_boot)

    pxe = sub.add_parser(
        "pxe", help="write a PXE tree that installs every host by MAC (BIOS, UEFI, iPXE)",
        description="Write OUT: tftp/ (pxelinux, GRUB, iPXE entries per host MAC; kernel and "
                    "initrd from the base ISO), http/ks/, dnsmasq.conf and nginx.conf. Hosts "
                    "that have installed stay on local boot. Without a site file: switch hosts "
                    "of the tree at -o (--done, --reinstall, --done-log).")
    pxe.add_argument("site", type=Path, nargs="?", help="the site file (YAML)")
    pxe.add_argument("--base", type=Path, help="the CentOS 7 ISO (default: the site's media:)")
    pxe.add_argument("--server", help="the boot server's URL, http://HOST[:PORT] "
                                      "(default: the site's pxe.server)")
    pxe.add_argument("-o", "--output", type=Path, default=Path("out/pxe"),
                     help="the tree (default: out/pxe)")
    pxe.add_argument("--reinstall", action="append", default=[], metavar="HOST",
                     help="install HOST again on its next network boot (repeatable)")
    pxe.add_argument("--done", action="append", default=[], metavar="HOST",
                     help="without a site file: HOST has installed, boot it locally")
    pxe.add_argument("--done-log", type=Path, metavar="FILE",
                     help="without a site file: switch the hosts nginx logged as done")
    pxe.add_argument("-j", "--jobs", type=jobs, default=None,
                     help="worker processes for the kickstarts (default: one per core)")
    pxe.set_defaults(handler=cmd_pxe)

    serve = sub.add_parser(
        "serve", help="serve a PXE tree's kickstarts over HTTP and take done reports",
        description="Serve TREE/http/ (GET /ks/<host>.cfg; GET /ks picks the kickstart by the "
                    "X-RHN-Provisioning-MAC headers of inst.ks.sendmac) and POST /done/<host>, "
                    "which switches that host to local boot. One line per request on stderr.")
    serve.add_argument("tree", type=Path, help="a tree written by `ksbuild pxe`")
    serve.add_argument("--listen", default="0.0.0.0:8080",
                       help="HOST:PORT to listen on (default 0.0.0.0:8080; port 0: any free)")
    serve.add_argument("--syslog", metavar="HOST:PORT",
                       help="also take the installers' remote logs (boot them with "
                            "inst.syslog=SERVER:PORT) here, for package progress")
    serve.add_argument("--tftp-log", type=Path, metavar="FILE",
                       help="follow dnsmasq's log (log-facility=FILE) and record each host "
                            "that fetches its install entry by TFTP")
    serve.set_defaults(handler=cmd_serve)

    status = sub.add_parser(
        "status", help="each host's install state, from a PXE tree's events",
        description="Show every host of TREE: its state (kickstart fetched, installer started, "
                    "installing packages, installed, booted with its network up, failed, "
                    "degraded), since when, for how long, its last message, and the counts "
                    "per state. Read from TREE/state/events (no server needed).")
    status.add_argument("tree", type=Path, help="a tree written by `ksbuild pxe`")
    status.add_argument("--json", action="store_true",
                        help="JSON on stdout (with --watch: one line per update)")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                        metavar="SECONDS", help="redraw every SECONDS (default 2) until Ctrl-C")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KsbuildError as exc:
        if args.debug:
            raise
        say(f"ksbuild: {exc}")
        if exc.hint:
            say(f"ksbuild: hint: {exc.hint}")
        return exc.exit_code
    except KeyboardInterrupt:
        say("ksbuild: interrupted")
        return 130
    except OSError as exc:
        if args.debug:
            raise
        say(f"ksbuild: {exc}")
        return 1


def run() -> NoReturn:
    """The `ksbuild` process (the console script and `python -m builder`): main(), then
    _exit. Not in main(): tests call that in their own process."""
    _exit(main())


def _exit(code: int) -> NoReturn:
    """End the process without the interpreter's last work: a garbage collection over every
    object left, then freeing them one by one (a fleet's site, a repack's ISO tree), where
    the process's end frees its memory at once. ~60 ms after a one-host rebuild of 10,000
    hosts (issue 16); mypy ends so too (python/mypy, mypy/util.py, hard_exit). What that
    exit does that matters is done here first: the atexit functions (multiprocessing's,
    weakref.finalize's), then the flush of buffered output. The interpreter's exit, with the
    objects left kept out of its collection (gc.freeze: files are closed by then), where a
    thread that is not a daemon runs (the interpreter waits for it), or a profiler or tracer
    (`python -m cProfile -m builder ...` writes its statistics after the code returns)."""
    import atexit
    import os

    threading = sys.modules.get("threading")  # not imported: no thread but this one
    if sys.getprofile() is not None or sys.gettrace() is not None or (
            threading is not None and any(
                t.is_alive() and not t.daemon and t is not threading.main_thread()
                for t in threading.enumerate())):
        gc.freeze()
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # the reader of a pipe is gone: the interpreter's own exit says 120
        code = code or 120
    os._exit(code)
