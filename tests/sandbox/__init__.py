"""Run a kickstart's %post scripts for real, the way anaconda does, in a throwaway root.

    box = Sandbox(tmp_path / "box")          # a fresh CentOS 7 shaped tree
    box.seed_anaconda_network(kickstart)     # the ifcfg files anaconda writes before %post
    result = box.install(kickstart)          # every %post, in order; stops as anaconda does
    assert result.ok, result.report()
    box.target / "etc/hostname"              # what the scripts left behind

Chroot scripts run with `box.target` as /. --nochroot scripts run in `box.installer`, a
tree standing for the installer's own root, which holds the target at /mnt/sysimage as
anaconda mounts it (so box.target is box.installer / "mnt/sysimage").

Each script is written to /tmp/ks-script-XXXXXX in its root and run as `<interpreter>
/tmp/ks-script-XXXXXX` from /, stdout and stderr in its --log (else the script's name
plus .log). A failing --erroronfail script stops the install: no later
script runs. See tests/sandbox/isolation.py for how the root is cut off from this machine.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.sandbox import isolation
from tests.sandbox.root import build_root
from tests.sandbox.scripts import PostScript, bridge_commands, install_device, post_scripts
from tests.sandbox.tree import Tree, snapshot

__all__ = ["InstallResult", "PostScript", "Sandbox", "ScriptRun", "post_scripts"]

SCRIPT_TIMEOUT = 120  # seconds; a %post that waits for input hangs the real install too


@dataclass(frozen=True)
class ScriptRun:
    script: PostScript
    status: int
    log: str  # what the script wrote to stdout and stderr

    @property
    def failed(self) -> bool:
        return self.status != 0


@dataclass
class InstallResult:
    runs: list[ScriptRun] = field(default_factory=list)
    stopped_by: ScriptRun | None = None  # the --erroronfail script that aborted the install

    @property
    def ok(self) -> bool:
        return not any(run.failed for run in self.runs)

    def report(self) -> str:
        lines = []
        for run in self.runs:
            lines.append(f"%post at line {run.script.line} ({run.script.interpreter}, "
                         f"{'chroot' if run.script.in_chroot else 'nochroot'}): "
                         f"exit {run.status}")
            lines += ["    " + line for line in run.log.splitlines()]
        if self.stopped_by is not None:
            lines.append(f"install stopped by the %post at line {self.stopped_by.script.line}")
        return "\n".join(lines)


class Sandbox:
    def __init__(self, folder: Path, mode: str | None = None) -> None:
        self.folder = folder
        self.mode = mode or isolation.default_mode()
        self.installer = folder
        self.target = folder / "mnt/sysimage"
        build_root(self.target)
        isolation.prepare(self.mode, self.target)
        self.before: Tree | None = None  # the target just before the first install
        self.logs: set[str] = set()  # the --log files of the scripts run so far

    def calls(self) -> list[list[str]]:
        """The stubs' calls so far: [program, arg...] each."""
        text = (self.target / ".sandbox/calls").read_text(encoding="utf-8")
        return [line.split("\t") for line in text.splitlines()]

    def run(self, argv: list[str]) -> tuple[int, str]:
        """Run a command in the target; its exit status and output (stdout and stderr)."""
        status = isolation.run_in(self.mode, self.target, "/.sandbox/out", argv,
                                  SCRIPT_TIMEOUT)
        return status, (self.target / ".sandbox/out").read_text(encoding="utf-8",
                                                                errors="replace")

    def seed_anaconda_network(self, kickstart: str, nics: dict[str, str] | None = None) -> None:
        """The ifcfg files anaconda (CentOS 7) writes before %post, on a machine whose NICs
        are `nics` (kernel name -> MAC; also seen in /sys/class/net, which anaconda mounts
        in the target):

        - for `network --bridgeslaves=`: ifcfg-<bridge> and one ifcfg-<bridge>_slave_<n> per
          slave, each with its own UUID, and the installer's own DHCP connection on the
          first slave;
        - for an install NIC given by MAC (`--device=<mac>`): ifcfg-<kernel name> with
          DEVICE= only, ONBOOT=yes; every other NIC: ifcfg-<kernel name> with HWADDR= in
          upper case (as NetworkManager writes it) and ONBOOT=no.
        Our %post must replace them, not add a second file per device."""
        folder = self.target / "etc/sysconfig/network-scripts"
        for name, mac in (nics or {}).items():
            sysfs = self.target / "sys/class/net" / name
            sysfs.mkdir(parents=True, exist_ok=True)
            (sysfs / "address").write_text(mac + "\n")
        install = install_device(kickstart)
        for number, (name, mac) in enumerate((nics or {}).items()):
            onboot = "yes" if mac == install else "no"
            hwaddr = "" if mac == install else f"HWADDR={mac.upper()}\n"
            (folder / f"ifcfg-{name}").write_text(
                f"TYPE=Ethernet\nBOOTPROTO=dhcp\nDEFROUTE=yes\nIPV6INIT=yes\nNAME={name}\n"
                f"UUID=00000000-0000-4000-8000-{number:012d}\nDEVICE={name}\n{hwaddr}"
                f"ONBOOT={onboot}\n")
        bridges = bridge_commands(kickstart)
        if bridges:
            nic = bridges[0][1][0]
            (folder / f"ifcfg-{nic}").write_text(
                f"TYPE=Ethernet\nBOOTPROTO=dhcp\nDEFROUTE=yes\nIPV6INIT=yes\nNAME={nic}\n"
                f"UUID=00000000-0000-4000-8000-999999999999\nDEVICE={nic}\nONBOOT=yes\n")
        for number, (bridge, slaves) in enumerate(bridges):
            (folder / f"ifcfg-{bridge}").write_text(
                f"DEVICE={bridge}\nSTP=no\nTYPE=Bridge\nBOOTPROTO=dhcp\nDEFROUTE=yes\n"
                f'NAME="Bridge connection {bridge}"\n'
                f"UUID=00000000-0000-4000-8000-{number:06d}000000\nONBOOT=yes\n")
            for index, slave in enumerate(slaves, 1):
                (folder / f"ifcfg-{bridge}_slave_{index}").write_text(
                    f'TYPE=Ethernet\nNAME="{bridge} slave {index}"\n'
                    f"UUID=00000000-0000-4000-8000-{number:06d}{index:06d}\n"
                    f"DEVICE={slave}\nONBOOT=yes\nBRIDGE={bridge}\n")

    def install(self, kickstart: str) -> InstallResult:
        """Run every %post of `kickstart` as anaconda would."""
        if self.before is None:
            self.before = snapshot(self.target)
        result = InstallResult()
        for script in post_scripts(kickstart):
            run = self.run_script(script)
            result.runs.append(run)
            if run.failed and script.error_on_fail:
                result.stopped_by = run
                break
        return result

    def run_script(self, script: PostScript) -> ScriptRun:
        root = self.target if script.in_chroot else self._installer_root()
        fd, path = tempfile.mkstemp(prefix="ks-script-", dir=root / "tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(script.body)
        os.chmod(path, 0o700)
        name = "/tmp/" + Path(path).name
        log = script.log or name + ".log"
        self.logs.add(log)
        (root / log.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        try:
            done = isolation.run_in(self.mode, root, log, [script.interpreter, name],
                                    SCRIPT_TIMEOUT)
        finally:
            # Anaconda leaves the script behind; we do not, so two runs leave the same tree.
            os.unlink(path)
        text = (root / log.lstrip("/")).read_text(encoding="utf-8", errors="replace")
        return ScriptRun(script, done, text)

    def _installer_root(self) -> Path:
        """The installer's root for --nochroot scripts, with the target at /mnt/sysimage."""
        if not (self.installer / "usr/bin/bash").exists():
            build_root(self.installer)
            isolation.prepare(self.mode, self.installer)
        return self.installer
