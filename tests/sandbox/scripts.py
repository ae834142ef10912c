"""The %post sections of a kickstart, as pykickstart (RHEL7 grammar) reads them."""

from __future__ import annotations

from dataclasses import dataclass

from pykickstart.constants import KS_SCRIPT_POST
from pykickstart.parser import KickstartParser
from pykickstart.version import RHEL7, makeVersion


@dataclass(frozen=True)
class PostScript:
    body: str
    interpreter: str  # /bin/sh unless --interpreter
    in_chroot: bool  # False with --nochroot
    error_on_fail: bool  # --erroronfail: a failure stops the install
    log: str | None  # --log path (inside the chroot for chroot scripts)
    line: int  # where the section starts in the kickstart


def post_scripts(kickstart: str) -> list[PostScript]:
    """Every %post of `kickstart`, in the order anaconda runs them."""
    handler = makeVersion(RHEL7)
    KickstartParser(handler, followIncludes=False).readKickstartFromString(kickstart)
    return [
        PostScript(body=script.script, interpreter=script.interp, in_chroot=script.inChroot,
                   error_on_fail=script.errorOnFail, log=script.logfile, line=script.lineno)
        for script in handler.scripts if script.type == KS_SCRIPT_POST
    ]


def bridge_commands(kickstart: str) -> list[tuple[str, list[str]]]:
    """(bridge device, its slaves) for every `network --bridgeslaves=` line."""
    handler = makeVersion(RHEL7)
    KickstartParser(handler, followIncludes=False).readKickstartFromString(kickstart)
    return [(nd.device, nd.bridgeslaves.split(","))
            for nd in handler.network.network if nd.bridgeslaves]


def install_device(kickstart: str) -> str | None:
    """The MAC the first `network` line names with --device=, if it names one."""
    handler = makeVersion(RHEL7)
    KickstartParser(handler, followIncludes=False).readKickstartFromString(kickstart)
    lines = handler.network.network
    device = lines[0].device if lines else None
    return device.lower() if device and ":" in device else None
