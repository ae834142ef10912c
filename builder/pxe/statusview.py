"""`ksbuild status TREE`: the fleet's status (builder/pxe/events.py) as a rich table with the
counts per state; cli.py prints it (once, or redrawn in place with --watch)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from builder.progress import human_time

STYLES = {"booted": "green", "failed": "bold red", "degraded": "bold red", "pending": "dim",
          "installed": "cyan", "packages": "blue", "started": "blue", "kickstart": "blue",
          "boot": "blue"}


def when(seconds: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if seconds else ""


def counts_line(summary: dict[str, Any]) -> Text:
    line = Text()
    for state in summary["states"]:
        count = summary["counts"][state]
        if count:
            line.append(f"{state} {count}", style=STYLES.get(state, ""))
            line.append("  ")
    line.append(f"| {summary['total']} hosts, {summary['progress'] * 100:.0f}% of the way")
    return line


def table(summary: dict[str, Any]) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("host", "MAC", "state", "since", "for", "install time", "last message"):
        grid.add_column(name, no_wrap=name != "last message",
                        justify="right" if name in ("for", "install time") else "left")
    for host in summary["hosts"]:
        grid.add_row(host["host"], host["mac"], Text(host["state"], STYLES.get(host["state"], "")),
                     when(host["since"]),
                     human_time(host["for"]) if host["for"] is not None else "",
                     human_time(host["duration"]) if host["duration"] is not None else "",
                     host["message"])
    return grid


def view(summary: dict[str, Any]) -> Group:
    return Group(table(summary), Text(), counts_line(summary))
