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
