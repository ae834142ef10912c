"""The command line: exit codes, one-line errors, and outputs that are never half-written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings

from builder import cli, site
from builder.errors import InputError
from tests.conftest import REPO
from tests.sitefiles import site_doc, write_site
from tests.test_site import _alias_bomb, mutated_sites


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **(env or {})},
                          timeout=timeout)


def test_help_for_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "render" in result.stdout and "check" in result.stdout
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        sub = run_cli(name, "--help")
        assert sub.returncode == 0, (name, sub.stderr)
        assert "usage: ksbuild " + name in sub.stdout


def test_render_writes_the_example(tmp_path: Path) -> None:
    result = run_cli("render", "kickstarts/site.yaml", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in (tmp_path / "out" / "ks").iterdir()] == [
        "cdh-host.c7.jevoncode.com.cfg"]


def test_bad_input_exit_2_one_line_no_traceback_no_output(tmp_path: Path) -> None:
    doc = site_doc()
    doc["hosts"][0]["bridge"]["gateway"] = "192.16.1.1"
    path = write_site(tmp_path, doc)
    out = tmp_path / "out"
    result = run_cli("render", str(path), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"ksbuild: {path}:")
    assert "hosts[0].bridge.gateway: 192.16.1.1 is not inside 192.168.0.0/16" in result.stderr
    assert not out.exists()
    assert run_cli("check", str(path)).returncode == 2


@pytest.mark.parametrize("where", ["overlays/common/etc/fifo", "overlays/.ksbuild-modes",
                                   "overlays/hosts/kvm2.example.com"])
def test_fifo_in_an_overlay_is_refused_without_opening_it(tmp_path: Path, where: str) -> None:
    """Opening a FIFO blocks until a writer comes: the build hung for good."""
    (tmp_path / "overlays" / "common" / "etc").mkdir(parents=True)
    (tmp_path / "overlays" / "hosts").mkdir()
    os.mkfifo(tmp_path / where)
    path = write_site(tmp_path, site_doc(overlays="overlays"))
    try:
        result = run_cli("check", str(path), timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("ksbuild check blocked on a FIFO in the overlay")
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"ksbuild: {tmp_path / where}: not a regular file or folder; " \
        "overlays hold only those\n" or result.stderr == f"ksbuild: {tmp_path / where}: " \
        "not a folder\n", result.stderr


@pytest.mark.parametrize("text", [
    _alias_bomb(9), "a: &a [*a]\nhosts: []\n", "hosts: " + "[" * 2000 + "]" * 2000 + "\n",
    "hosts: !!timestamp abc\n", "hosts:\n  - hostname: a\x1b[2Jb\n"])
def test_hostile_yaml_exit_2_one_line_quickly(tmp_path: Path, text: str) -> None:
    """Before: 18 s and 1.3 GB for 7 levels of aliases (9 never ended); tracebacks for the
    others."""
    path = write_site(tmp_path, text)
    started = time.monotonic()
    result = run_cli("render", str(path), "-o", str(tmp_path / "out"), timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"ksbuild: {path}:")
    assert "\x1b" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_failed_render_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    good = write_site(tmp_path, site_doc(), "good.yaml")
    out = tmp_path / "out"
    assert cli.main(["render", str(good), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in (out / "ks").iterdir()}
    doc = site_doc()
    doc["hosts"][1]["mac"] = doc["hosts"][0]["mac"]
    bad = write_site(tmp_path, doc, "bad.yaml")
    assert cli.main(["render", str(bad), "-o", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in (out / "ks").iterdir()} == before
    assert sorted(p.name for p in out.iterdir()) == ["ks"]  # no temporary folders left


def test_a_removed_host_disappears_from_the_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main(["render", str(write_site(tmp_path, site_doc())), "-o", str(out)]) == 0
    doc = site_doc()
    doc["hosts"].pop()
    assert cli.main(["render", str(write_site(tmp_path, doc)), "-o", str(out)]) == 0
    assert [p.name for p in (out / "ks").iterdir()] == ["cdh-host.c7.jevoncode.com.cfg"]


def test_check_writes_nothing(tmp_path: Path) -> None:
    path = write_site(tmp_path, site_doc())
    before = sorted(tmp_path.iterdir())
    assert cli.main(["check", str(path)]) == 0
    assert sorted(tmp_path.iterdir()) == before


@settings(max_examples=220, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(doc=mutated_sites())
def test_generated_bad_sites_exit_2_with_one_line(tmp_path: Path, doc: dict[str, Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write_site(tmp_path, doc)
    try:
        site.load(path)
        assume(False)  # the mutation happened to leave a valid site: not a bad file
    except InputError:
        pass
    out = tmp_path / "out-never"
    capsys.readouterr()
    assert cli.main(["render", str(path), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"ksbuild: {path}:"), captured.err
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = write_site(tmp_path, "hosts: 3\n")
    result = run_cli("--debug", "check", str(path))
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_hash_password_prints_a_sha512_crypt(tmp_path: Path) -> None:
    # getpass reads the terminal; without one it falls back to stdin.
    result = subprocess.run([sys.executable, "-m", "builder", "hash-password"], cwd=REPO,
                            input="s3cret\ns3cret\n", text=True, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    from passlib.hash import sha512_crypt

    hashed = result.stdout.strip()
    assert hashed.startswith("$6$") and sha512_crypt.verify("s3cret", hashed)
    assert "s3cret" not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Issue 11: options get the site file's checks; limits are enforced.


def pxe_site(tmp_path: Path) -> Path:
    from tests.pxe_support import write_site as write_pxe_site

    return write_pxe_site(tmp_path, {"server": "http://192.0.2.1"})


@pytest.mark.parametrize("server, complaint", [
    ("http://192.0.2.1\n%post\ncurl evil\n%end", "is not an http://host[:port] URL"),
    ("http://192.0.2.1/\ninst.updates=http://evil/", "is not an http://host[:port] URL"),
    ("http://192.0.2.1 inst.sshd", "is not an http://host[:port] URL"),
    ("http://192.0.2.1:99999", "is not an http://host[:port] URL"),
    ("http://192.0.2.1:0", "port 0"),
    ("http://[::g]:8080", "is not an http://host[:port] URL"),
    ("http://192.0.2.1/path", "is not an http://host[:port] URL"),
])
def test_server_option_gets_the_site_files_checks(tmp_path: Path, server: str,
                                                  complaint: str) -> None:
    from tests.pxe_support import small_base_iso

    out = tmp_path / "pxe"
    done = run_cli("pxe", str(pxe_site(tmp_path)), "--base", str(small_base_iso()),
                   "--server", server, "-o", str(out))
    assert done.returncode == 2 and done.stderr.startswith("ksbuild: --server: "), done.stderr
    assert complaint in done.stderr and done.stderr.count("\n") == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pxe")]


def test_an_ipv6_server_reaches_every_entry_with_brackets(tmp_path: Path) -> None:
    from tests.pxe_support import small_base_iso

    out = tmp_path / "pxe"
    done = run_cli("pxe", str(pxe_site(tmp_path)), "--base", str(small_base_iso()),
                   "--server", "http://[2001:db8::5]:8080", "-o", str(out))
    assert done.returncode == 0, done.stderr
    entry = out / "tftp/pxelinux.cfg/01-52-54-00-12-34-56"
    assert "inst.ks=http://[2001:db8::5]:8080/ks/" in entry.read_text()
    assert "listen [2001:db8::5]:8080;" in (out / "nginx.conf").read_text()


@pytest.mark.parametrize("value", ["0", "-3", "1e3", "99999"])
def test_jobs_out_of_range_is_one_line(tmp_path: Path, value: str) -> None:
    done = run_cli("build", "kickstarts/site.yaml", "-o", str(tmp_path / "out"), "-j", value)
    assert done.returncode == 2 and "-j/--jobs: " in done.stderr and "worker" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["build"], ["bogus"], ["pxe", "x.yaml", "--nope"],
                                  ["serve", "t", "--listen"]])
def test_a_bad_command_line_is_one_line_exit_2(argv: list[str]) -> None:
    done = run_cli(*argv)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "--help" in done.stderr, done.stderr


def test_more_hosts_than_the_limit_is_one_line_before_any_host_is_parsed(
        tmp_path: Path) -> None:
    text = "hosts:\n" + "- {hostname: a.example.com}\n" * (site.MAX_HOSTS + 1)
    path = tmp_path / "big.yaml"
    path.write_text(text)
    done = run_cli("check", str(path), timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert f"{site.MAX_HOSTS + 1} hosts; a site holds at most 100,000" in done.stderr


def test_an_unreadable_base_for_pxe_is_one_line(tmp_path: Path) -> None:
    loop = tmp_path / "loop.iso"
    loop.symlink_to(loop)  # open(2) fails (ELOOP), as for a base without read permission
    done = run_cli("pxe", str(pxe_site(tmp_path)), "--base", str(loop), "-o",
                   str(tmp_path / "pxe"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{loop}: cannot read" in done.stderr


END_OF_RUN = """
import atexit, sys, threading, time
from builder import cli
atexit.register(print, "atexit ran")
if sys.argv[1] == "thread":  # no daemon: the interpreter's exit waits for it
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
sys.argv = ["ksbuild", "schema"]
cli.run()
"""


def buffered_env() -> dict[str, str]:
    """The environment without PYTHONUNBUFFERED (this machine sets it): output into a pipe is
    then block-buffered, as it is for most users."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("case", ["alone", "thread"])
def test_the_process_end_keeps_output_atexit_functions_and_threads(case: str) -> None:
    """cli.run() ends the process without the interpreter's exit (os._exit), having done
    what that exit would that matters: the buffered output written whole, the atexit
    functions run; with a thread that is no daemon, the interpreter's exit, which waits."""
    done = subprocess.run([sys.executable, "-c", END_OF_RUN, case], cwd=REPO, text=True,
                          capture_output=True, env=buffered_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    tail = "atexit ran\n" if case == "alone" else "thread done\natexit ran\n"
    assert done.stdout == site.schema_text() + tail


def test_a_profiler_gets_its_statistics_of_the_command(tmp_path: Path) -> None:
    """`python -m cProfile -o FILE -m builder ...` writes FILE once the command returns: the
    process must then end as the interpreter ends it, not by os._exit."""
    stats = tmp_path / "schema.prof"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "builder",
                           "schema"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import pstats

    assert any(name == "cmd_schema" for _f, _l, name in pstats.Stats(str(stats)).stats)


def test_a_reader_gone_is_exit_120_without_a_traceback() -> None:
    """Output still buffered at the end, into a pipe whose reader has closed: the flush
    fails, and the exit says so by 120 (as the interpreter's own would), without a
    traceback. The command itself spoke on stderr only."""
    script = ("import sys\nfrom builder import cli\nprint('buffered')\n"
              "sys.argv = ['ksbuild', 'check', 'kickstarts/site.yaml']\ncli.run()\n")
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, stdout=writer,
                              stderr=subprocess.PIPE, text=True, env=buffered_env(),
                              timeout=120)
    finally:
        os.close(writer)
    assert done.returncode == 120, done.stderr
    assert re.fullmatch(r"kickstarts/site\.yaml: \d+ host\(s\), every kickstart valid\n",
                        done.stderr), done.stderr
