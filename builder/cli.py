"""The command line: the only place that prints and turns errors into exit codes.

Exit codes: 0 ok, 1 a build failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from builder import __version__
from builder.errors import KsbuildError

Handler = Callable[[argparse.Namespace], int]


def say(message: str) -> None:
    print(message, file=sys.stderr)


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
                                    options=options)
        print(f"{files.vmlinuz}\n{files.initrd}\n{files.treeinfo}")
        return 0
    iso = fetch.resolve_media(media, cache_dir=args.cache_dir, mirror=args.mirror,
                              progress=shown, options=options)
    print(iso)
    return 0


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
    print(secrets.sha512_crypt(password))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
