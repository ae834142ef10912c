"""The kickstart grammar of the real CentOS 7.9 installer, where it is stricter than the
pykickstart ksbuild validates with.

Anaconda 21.48.22.159 parses kickstarts with pykickstart 1.99.66.22 (tag r1.99.66.22-1),
which is not on PyPI; ksbuild validates with pykickstart 3.x's RHEL7 handler. A kickstart
must pass both, so builder/ksvalidate.py's Validator runs 3.x and then `problem()` below: every
command must be one ksbuild writes, and every option one the 1.99.66.22 RHEL7 handler knows
(pykickstart/handlers/rhel7.py there, and the command classes it names). Where 1.99.66.22 is
the more lenient one (sshkey, reboot --kexec, ...) 3.x already refuses. docs/real-installer.md
lists each difference found and how it was found.
"""

from __future__ import annotations

import functools
import shlex

# Command -> its options in the 1.99.66.22 RHEL7 handler, for the commands ksbuild writes or
# may write. A command not here is refused until someone checks it against that source.
_COMMANDS = {
    "install": "--root-device",
    "url": "--mirrorlist --noverifyssl --proxy --sslcacert --sslclientcert --sslclientkey --url",
    "cdrom": "",
    "repo": "--baseurl --cost --excludepkgs --ignoregroups --includepkgs --install "
            "--mirrorlist --name --noverifyssl --proxy --sslcacert --sslclientcert "
            "--sslclientkey",
    "lang": "--addsupport",
    "keyboard": "--switch --vckeymap --xlayouts",
    "timezone": "--isUtc --nontp --ntpservers --utc",
    "rootpw": "--iscrypted --lock --plaintext",
    "sshkey": "--username",
    "selinux": "--disabled --enforcing --permissive",
    "firewall": "--disable --disabled --enable --enabled --ftp --http --port --remove-service "
                "--service --smtp --ssh --trust --use-system-defaults",
    "network": "--activate --bindto --bondopts --bondslaves --bootproto --bridgeopts "
               "--bridgeslaves --device --dhcpclass --essid --ethtool --gateway --hostname "
               "--interfacename --ip --ipv6 --ipv6gateway --mtu --nameserver --netmask "
               "--no-activate --nodefroute --nodns --noipv4 --noipv6 --notksdevice --onboot "
               "--teamconfig --teamslaves --vlanid --wepkey --wpakey",
    "ignoredisk": "--drives --interactive --nonfatal --only-use",
    "bootloader": "--append --boot-drive --default --disabled --driveorder --extlinux "
                  "--iscrypted --leavebootorder --location --md5pass --nombr --password "
                  "--timeout --upgrade",
    "zerombr": "",
    "clearpart": "--all --cdl --disklabel --drives --initlabel --linux --list --none",
    "part": "--active --asprimary --backuppassphrase --cipher --encrypted --escrowcert "
            "--fsoptions --fsprofile --fstype --grow --hibernation --label --maxsize "
            "--mkfsoptions --noformat --onbiosdisk --ondisk --ondrive --onpart --passphrase "
            "--recommended --resize --size --type --usepart",
    "autopart": "--backuppassphrase --cipher --encrypted --escrowcert --fstype --nohome "
                "--nolvm --passphrase --type",
    "reqpart": "--add-boot",
    "skipx": "",
    "firstboot": "--disable --disabled --enable --enabled --reconfig",
    "eula": "--accept --accepted --agree --agreed",
    "reboot": "--eject --kexec",
    "poweroff": "--eject --kexec",
    "services": "--disabled --enabled",
    "text": "",
    "cmdline": "",
}
COMMAND_OPTIONS = {name: frozenset(options.split()) for name, options in _COMMANDS.items()}

# Section header -> its options (pykickstart/sections.py of 1.99.66.22: ScriptSection and its
# subclasses, PackageSection). No %addon, %anaconda: ksbuild writes neither.
_SCRIPT = "--erroronfail --interpreter --log --logfile"
_SECTIONS = {
    "%pre": _SCRIPT,
    "%pre-install": _SCRIPT,
    "%post": _SCRIPT + " --nochroot",
    "%onerror": _SCRIPT,
    "%traceback": _SCRIPT,
    "%packages": "--default --excludedocs --ignoredeps --ignoremissing --instLangs --multilib "
                 "--nobase --nocore --resolvedeps --retries --timeout",
}
SECTION_OPTIONS = {name: frozenset(options.split()) for name, options in _SECTIONS.items()}
# Lines of the kickstart itself that are neither commands nor sections.
DIRECTIVES = ("%include", "%ksappend")


# The line breaks of str.splitlines (which pykickstart reads by) besides "\n" in ASCII; outside
# ASCII there are \x85, \u2028 and \u2029 too.
_OTHER_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")


def newline_lines(text: str) -> bool:
    """Are `text`'s lines (str.splitlines) the pieces between its "\n"s? Said only of ASCII
    text (a flag Python keeps: no scan) without another break: every kickstart ksbuild
    renders. Such a text can be searched with str.find instead of read line by line."""
    return text.isascii() and not any(brk in text for brk in _OTHER_BREAKS)


def line_starting(text: str, at: int, prefix: str) -> int:
    """In a text of newline_lines, where the first line from offset `at` (a line's start)
    that starts with `prefix` after blanks starts, or -1 (with %end: where a section opened
    before `at` ends)."""
    found = text.find(prefix, at)
    while found >= 0:
        start = text.rfind("\n", at, found) + 1 or at  # (rfind: -1 if none)
        if not text[start:found].strip():
            return start
        found = text.find(prefix, found + 1)
    return -1


def problem(text: str) -> str | None:
    """What in `text` the RHEL 7.9 grammar refuses or ksbuild has not checked against it
    (line number and reason), or None."""
    if not newline_lines(text):
        return _problem_by_lines(text)
    # As _problem_by_lines, but a section's body (most of the text) is skipped by str.find;
    # the lines before the next one that starts with % after blanks (none of them opens a
    # section) are looked up all at once (a split, the line memo mapped over them and a
    # count, all in C), and one by one only if one is refused; a line's number is counted
    # only for the line refused (counting each body's lines was a fifth of the time).
    at, size = 0, len(text)
    while at < size:
        opener = line_starting(text, at, "%")
        stop = size if opener < 0 else opener
        verdicts = list(map(_line_problem, text[at:stop].split("\n")))
        if verdicts.count(_FINE) < len(verdicts):
            return _refused(text, at, verdicts)
        if opener < 0:
            return None
        cut = text.find("\n", opener)
        end = size if cut < 0 else cut
        verdict = _line_problem(text[opener:end])
        if verdict[1] is not None:
            return _refused(text, opener, [verdict])
        at = end + 1
        if verdict[0]:  # it opens a section: go on after the line that ends it
            closing = line_starting(text, at, "%end")
            if closing < 0:
                return None
            cut = text.find("\n", closing)
            at = size if cut < 0 else cut + 1
    return None


# _line_problem of a line that opens no section and is not refused
_FINE = (False, None)


def _refused(text: str, at: int, verdicts: list[tuple[bool, str | None]]) -> str:
    """The first refusal among the verdicts on the lines from offset `at` (a line's start)
    on, with its line's number."""
    number = text.count("\n", 0, at) + 1
    offset, wrong = next((n, wrong) for n, (_, wrong) in enumerate(verdicts)
                         if wrong is not None)
    return f"line {number + offset}: {wrong}"


def _problem_by_lines(text: str) -> str | None:
    lines = enumerate(text.splitlines(), 1)
    for number, line in lines:
        opens_section, wrong = _line_problem(line)
        if wrong is not None:
            return f"line {number}: {wrong}"
        if opens_section:  # a script or package list: only its end matters (most lines)
            for _, body_line in lines:
                if "%end" in body_line and body_line.lstrip().startswith("%end"):
                    break
    return None


@functools.lru_cache(maxsize=4096)
def _line_problem(line: str) -> tuple[bool, str | None]:
    """For a line outside any section: does it open one, and what is wrong with it. A pure
    function of the line, remembered: most lines are the same in every kickstart of a fleet
    (the network lines are not, so the memo is bounded)."""
    words = line.split()
    if not words or words[0].startswith("#"):
        return False, None
    head = words[0]
    if head in DIRECTIVES:
        return False, None
    if head.startswith("%"):
        allowed = SECTION_OPTIONS.get(head)
        what = "section"
    else:
        allowed = COMMAND_OPTIONS.get(head)
        what = "command"
    opens_section = what == "section"
    if allowed is None:
        return opens_section, f"{what} {head} (not in ksbuild's table of that grammar)"
    for option in _options(line):
        if option not in allowed:
            return opens_section, f"{head} has no option {option}"
    return opens_section, None


def _options(line: str) -> list[str]:
    if '"' in line or "'" in line:  # shlex is ~50x slower than split: only where it matters
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()  # unbalanced quotes: pykickstart reports those itself
    else:
        words = line.split()
        comment = next((n for n, word in enumerate(words) if word.startswith("#")), None)
        words = words[:comment]
    return [word.split("=", 1)[0] for word in words[1:] if word.startswith("--")]
