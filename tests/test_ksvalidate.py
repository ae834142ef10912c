"""builder/ksvalidate.py's Validator (one handler, memos, a faster section reader) gives exactly
what a brand-new plain pykickstart RHEL7 handler gives: the same verdict and message for every
kickstart of a varied corpus (every kickstart the example sites and the test fleets render, ks/
and PXE, and many hand-broken ones), in several orders, and the same handler state after each;
a refused kickstart never changes the verdict on the next one."""

from __future__ import annotations

import random
import shlex
import warnings
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import pytest
from pykickstart.base import BaseHandler
from pykickstart.errors import KickstartParseError, KickstartWarning
from pykickstart.options import KSOptionParser
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL7, makeVersion

from bench.fleet import fleet_site
from builder import el7grammar, ksvalidate, site
from builder.errors import KsbuildError
from builder.kickstart import render_site
from builder.site import Host
from tests.conftest import REPO
from tests.sitefiles import site_doc, write_site

Verdict = tuple[str, str] | None


def pxe_extra(host: Host) -> dict[str, str]:
    """What builder/pxe/tree.py adds for a PXE kickstart (%pre, %onerror, the events)."""
    return {"pxe_done_url": f"http://127.0.0.1:8080/pxe/done/{host.hostname}",
            "pxe_events_url": f"http://127.0.0.1:8080/events/{host.hostname}"}


def site_docs() -> list[dict[str, Any]]:
    """The shapes the test fleets use."""
    docs = [site_doc()]
    storage = site_doc()
    storage["defaults"].update(
        storage={"drives": ["vda"], "partitions": [
            {"mount": "/boot", "size": 1024}, {"mount": "swap", "size": 4096},
            {"mount": "/", "size": 10240, "grow": True, "fstype": "ext4"}]},
        kernel_args=["console=ttyS0,115200", "nomodeset"], ntp=["0.centos.pool.ntp.org"],
        root_ssh_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKsb admin@example.com"],
        repos=[{"name": "updates", "install": True,
                "baseurl": "https://vault.centos.org/7.9.2009/updates/$basearch/"},
               {"name": "epel", "baseurl": "https://example.org/epel/7/$basearch/",
                "enabled": False}])
    storage["hosts"][1]["after_install"] = "reboot"
    docs.append(storage)
    fleet = fleet_site(12)
    fleet["defaults"]["source"] = "cdrom"
    docs.append(fleet)
    return docs


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every kickstart of the example sites and those, ks/ and PXE."""
    texts = []
    paths = [REPO / "kickstarts" / "site.yaml", REPO / "kickstarts" / "fleet.yaml"]
    paths += [write_site(tmp_path_factory.mktemp("site"), doc) for doc in site_docs()]
    for path in paths:
        loaded = site.load(path)
        texts += render_site(loaded, jobs=1).values()
        texts += render_site(loaded, jobs=1, extra=pxe_extra).values()
    texts = list(dict.fromkeys(texts))
    assert len(texts) > 30
    return texts


def line_edit(text: str, start: str, new: str) -> str:
    """`text` with its first line starting with `start` replaced by `new` (lines)."""
    lines = text.splitlines(True)
    at = next(n for n, line in enumerate(lines) if line.startswith(start))
    return "".join(lines[:at] + [new] + lines[at + 1:])


def after(text: str, start: str, new: str) -> str:
    lines = text.splitlines(True)
    at = next(n for n, line in enumerate(lines) if line.startswith(start))
    return "".join(lines[:at + 1] + [new] + lines[at + 1:])


def edited(text: str) -> list[str]:
    """Hand-made variants of an accepted kickstart: most refused, some accepted."""
    network = next(line for line in text.splitlines(True) if line.startswith("network --dev"))
    last_end = text.rindex("%end")
    return [
        after(text, "install", "frobnicate --now\n"),  # unknown command
        line_edit(text, "lang ", "lang en_US.UTF-8 --bogus\n"),  # bad option
        after(text, "lang ", "lang de_DE.UTF-8\n"),  # a command twice (accepted)
        after(text, "skipx", "skipx\n"),
        line_edit(text, "autopart", "autopart --type=lvm\npart / --size=1000\n"),  # conflict
        line_edit(text, "autopart", "part / --size=1000\nautopart --type=lvm\n"),
        line_edit(text, "autopart", "part / --size=1000\npart / --size=2000\n"),  # warns
        after(text, "network --dev", network),  # a duplicate network device (warns)
        text[:last_end],  # the last section without %end
        text[:last_end] + "%endfoo\n",
        text[:last_end] + "  %end   # done\n",
        text[:last_end] + "%end \"\n",  # unbalanced quote in an %end line (ValueError)
        after(text, "set -euo pipefail", "%end\n"),  # %end inside the body: the rest is junk
        after(text, "set -euo pipefail", "%endif\n%s\n  %ksappend x\n%bogus --x\n"),
        after(text, "set -euo pipefail", "%include /tmp/part-include\n"),
        after(text, "set -euo pipefail", "%include\n"),  # %include without a file
        after(text, "set -euo pipefail", "%packages\n"),  # a section header in a body
        after(text, "set -euo pipefail", "\n\n# comment\n  \t\n"),
        after(text, "install", "zerombr yes\n"),  # refused option
        after(text, "install", "upgrade\n"),  # deprecated command (warns)
        line_edit(text, "%packages", "%packages --nobase --default\n"),  # deprecated (warns)
        line_edit(text, "%packages", "%packages --ignoremissing --excludedocs\n-foo\n@bar\n"),
        line_edit(text, "%packages", "%packages --bogus\n"),
        line_edit(text, "%post", "%post --bogus\n"),
        line_edit(text, "%post", "%post --nochroot --log=/tmp/x.log\n"),
        line_edit(text, "autopart", " autopart --type=lvm\n"),  # indented: still a command
        line_edit(text, "autopart", '"autopart" --type=lvm\n'),  # quoted: still a command
        line_edit(text, "skipx", "\tskipx\n"),
        line_edit(text, "lang ", 'lang "en_US.UTF-8\n'),  # unbalanced quote (ValueError)
        line_edit(text, "lang ", "lang 'en_US.UTF-8'   # quoted, a comment\n"),
        after(text, "install", "%include /tmp/part-include\n%include\n"),
        after(text, "install", "%ksappend /tmp/x\n"),
        after(text, "install", "%foo\nbar\n%end\n"),  # unknown section
        after(text, "install", "method\n"),  # pykickstart's TypeError
        after(text, "install", "logging --level=info\n"),  # only the EL 7.9 grammar refuses
        after(text, "install", "text\n"),
        after(text, "install", "reboot\npoweroff --eject\n"),
        after(text, "install", "cdrom\n"),
        after(text, "install", "#platform=x86, AMD64, or Intel EM64T\n"),
        text + "%addon com_redhat_kdump --enable\nabc\n%end\n",
        text + "%anaconda\n%end\n",
        text + "%post\n%end\n",  # an empty body
        text + "%post\n\n  \n%end\n",
        text + "%pre-install\necho\n%end\n%traceback\necho\n%end\n%onerror\necho\n%end\n",
        text + "%certificate --filename=a.pem --dir=/etc/pki\nabc\n%end\n",
        text + "%certificate --filename=a.pem\nabc\n%end\n",
        text + "%post\necho unterminated\n%packages\n%end\n",
        text + "%post --interpreter=/usr/bin/python\nprint(1)",  # no newline, no %end
        text.replace("\n", "\r\n"),
        text.replace("echo \"ksbuild: %post done\"", "echo a\x0c%end\u2028%post\x85b"),
        text.rstrip("\n"),
        "", "\n", "# only a comment\n", "%end\n", "%post\n", "install\n",
    ]


@pytest.fixture(scope="module")
def corpus(rendered: list[str]) -> list[str]:
    ks_text = rendered[0]
    pxe_text = next(text for text in rendered if "%pre " in text)
    texts = rendered + edited(ks_text) + edited(pxe_text)
    return list(dict.fromkeys(texts))


def state(value: Any) -> Any:
    """A handler's whole state as plain data: every command's attributes, the data objects,
    scripts and packages (parsers and back references left out)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [state(item) for item in value]
    if isinstance(value, dict):
        return {str(key): state(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(repr(item) for item in value)
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, (ArgumentParser, ksvalidate._MemoOptions, BaseHandler)):
        return "<not compared>"
    return {"class": type(value).__name__,
            **{key: state(item) for key, item in vars(value).items() if key != "handler"}}


def handler_state(handler: BaseHandler) -> Any:
    return str(handler), state(handler), state(vars(handler))


def plain_verdict(text: str) -> tuple[Verdict, Any]:
    """What a brand-new plain pykickstart RHEL7 handler says (warnings are errors), then the
    EL 7.9 grammar (checked line by line without its memo)."""
    handler = makeVersion(RHEL7)
    parser = KickstartParser(handler, followIncludes=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KickstartWarning)
        try:
            parser.readKickstartFromString(text)
        except Exception as exc:  # every kind: a ValueError or TypeError must match too
            return (type(exc).__name__, str(exc)), handler_state(handler)
    strict = el7_unmemoized(text)
    return (("el7", strict) if strict else None), handler_state(handler)


def el7_unmemoized(text: str) -> str | None:
    """el7grammar.problem as a plain loop over the lines, without the line memo."""
    in_section = False
    for number, line in enumerate(text.splitlines(), 1):
        if in_section:
            in_section = not line.lstrip().startswith("%end")
            continue
        opens_section, wrong = el7grammar._line_problem.__wrapped__(line)
        if wrong is not None:
            return f"line {number}: {wrong}"
        in_section = opens_section
    return None


def fast_verdict(validator: ksvalidate.Validator, text: str) -> tuple[Verdict, Any]:
    try:
        validator.validate(text, "x.cfg")
    except KsbuildError as exc:
        message = str(exc)
        if "the RHEL 7.9 grammar" in message:
            return ("el7", message.split("rejects it: ", 1)[1]), handler_state(validator.handler)
        original = exc.__context__  # what pykickstart raised
        assert original is not None
        flat = " ".join(str(original).split())
        assert message == f"x.cfg: pykickstart (RHEL7) rejects it: {flat}"
        return (type(original).__name__, str(original)), handler_state(validator.handler)
    except Exception as exc:
        return (type(exc).__name__, str(exc)), handler_state(validator.handler)
    return None, handler_state(validator.handler)


def orders(corpus: list[str], accepted: list[str]) -> list[list[str]]:
    shuffled = []
    for seed in (1, 2, 3):
        texts = list(corpus)
        random.Random(seed).shuffle(texts)
        shuffled.append(texts)
    refused_between = []
    for n, text in enumerate(corpus):  # each kickstart between accepted ones, twice
        refused_between += [text, accepted[n % len(accepted)], text,
                            accepted[(n + 7) % len(accepted)]]
    return [corpus, corpus[::-1], *shuffled, refused_between]


def test_same_verdicts_and_state_as_a_new_plain_handler(corpus: list[str],
                                                        rendered: list[str]) -> None:
    expected = {text: plain_verdict(text) for text in corpus}
    verdicts = {verdict for verdict, _ in expected.values()}
    kinds = {verdict[0] for verdict in verdicts if verdict}
    assert None in verdicts and len(verdicts) > 30  # accepted and many different refusals
    assert {"KickstartParseError", "KickstartParseWarning", "KickstartDeprecationWarning",
            "ValueError", "TypeError", "el7"} <= kinds
    warm = ksvalidate.Validator()  # one validator, its memos filled across all the orders
    for texts in orders(corpus, rendered):
        cold = ksvalidate.Validator()
        for number, text in enumerate(texts):
            for validator in (warm, cold):
                got = fast_verdict(validator, text)
                assert got[0] == expected[text][0], (number, text)
                assert got[1] == expected[text][1], (number, text)


def test_a_refused_kickstart_does_not_change_the_next_verdict() -> None:
    """An indented or quoted command is a command too; the old reset looked at the text and
    left it set, so `part` after ` autopart` was refused as a conflict."""
    validator = ksvalidate.Validator()
    validator.validate(" autopart\n", "a.cfg")
    validator.validate("part / --size=100\n", "b.cfg")
    with pytest.raises(KsbuildError, match="RHEL 7.9 grammar"):  # pykickstart accepts it
        validator.validate('"autopart"\n', "a.cfg")
    validator.validate("part / --size=100\n", "b.cfg")
    with pytest.raises(KsbuildError, match="can't be used at the same time"):
        validator.validate("autopart\npart / --size=100\n", "c.cfg")
    validator.validate("part / --size=100\n", "b.cfg")


def test_the_memos_are_used(rendered: list[str]) -> None:
    """The corpus test would pass with the memos off: prove they are on."""
    validator = ksvalidate.Validator()
    info = ksvalidate._split_words.cache_info()
    for text in rendered[:4]:
        validator.validate(text, "x.cfg")
    assert ksvalidate._split_words.cache_info().hits > info.hits + 20
    lang = validator.handler.commands["lang"].op
    assert isinstance(lang, ksvalidate._MemoOptions) and len(lang.memo) == 1


def test_shlex_memo_is_shlex(corpus: list[str]) -> None:
    lines = {line for text in corpus for line in text.splitlines(True)}
    lines |= {'a "b c" d', "a 'b", 'a "b', "a \\", "x # y", "#", "", " ", "a\\ b"}
    for line in sorted(lines):
        for comments in (False, True):
            for _ in range(2):
                try:
                    expected: Any = shlex.split(line, comments=comments)
                except ValueError as exc:
                    expected = str(exc)
                try:
                    got: Any = ksvalidate._MemoShlex.split(line, comments=comments)
                except ValueError as exc:
                    got = str(exc)
                assert got == expected, line
                if isinstance(got, list):
                    got.append("changed by a caller")  # a new list each time


def test_el7grammar_memo_is_pure(corpus: list[str]) -> None:
    for text in corpus + corpus:
        assert el7grammar.problem(text) == el7_unmemoized(text)


def test_a_parse_that_warned_is_not_remembered() -> None:
    """A memo hit must not hide a warning that the real parse would show again."""
    def noisy(value: str) -> str:
        warnings.warn(f"noisy {value}", UserWarning, stacklevel=1)
        return value

    options = KSOptionParser(prog="x", description="x", version=RHEL7)
    options.add_argument("--name", type=noisy, version=RHEL7, help="x")
    options.add_argument("--quiet", version=RHEL7, help="x")
    shown = ksvalidate._ShownWarnings()
    memo = ksvalidate._MemoOptions(options, shown)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.showwarning = shown.counting(warnings.showwarning)
        for _ in range(3):
            assert memo.parse_args(args=["--name=a"], lineno=3).name == "a"
            assert memo.parse_args(args=["--quiet=b"], lineno=4).quiet == "b"
    assert [str(w.message) for w in seen] == ["noisy a"] * 3
    assert list(memo.memo) == [(False, ("--quiet=b",))]
    assert options.lineno == 4  # as a real parse leaves it


def test_memo_namespaces_share_no_list() -> None:
    options = KSOptionParser(prog="x", description="x", version=RHEL7)
    options.add_argument("--item", action="append", version=RHEL7, help="x")
    memo = ksvalidate._MemoOptions(options, ksvalidate._ShownWarnings())
    first = memo.parse_args(args=["--item=a", "--item=b"])
    first.item.append("c")
    again, extra = memo.parse_known_args(args=["--item=a", "--item=b", "rest"])
    assert memo.parse_args(args=["--item=a", "--item=b"]).item == ["a", "b"]
    assert again.item == ["a", "b"] and extra == ["rest"]
    with pytest.raises(KickstartParseError, match="unrecognized arguments: rest"):
        memo.parse_args(args=["--item=a", "--item=b", "rest"])  # known args are another key


def test_memos_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ksvalidate, "MEMO_LIMIT", 10)
    validator = ksvalidate.Validator()
    for n in range(25):
        validator.validate(f"network --device=eth{n} --bootproto=dhcp\n", "x.cfg")
    assert 0 < len(validator.handler.commands["network"].op.memo) <= 10


def test_section_reader_faithful_on_long_bodies(tmp_path: Path) -> None:
    """Bodies of every size around the special lines, against the plain parser."""
    validator = ksvalidate.Validator()
    for size in (0, 1, 2, 50):
        body = "".join(f"echo {n} %s\n" for n in range(size))
        for tail in ("%end\n", "", "%post\n%end\n", " %end\n", "%include /x\n%end\n"):
            text = f"install\n%post\n{body}{tail}%pre\n{body}%end\n"
            assert fast_verdict(validator, text) == plain_verdict(text), text
