"""One progress display for a download: the whole (bytes, speed, ETA) and the files in flight."""

from __future__ import annotations

import threading
from typing import Any


class Progress:
    """No display: the interface the downloader reports to."""

    def start(self, title: str, total: int, done: int) -> None:
        pass

    def file_started(self, path: str, size: int, have: int) -> Any:
        return None

    def advance(self, task: Any, n: int) -> None:
        pass

    def file_done(self, task: Any) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress(Progress):
    """rich's live display on stderr: stdout stays clean for --json and for `eval`."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichBar

        from provision.cli.output import console

        self._bar = RichBar(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console(stderr=True),
            transient=False,
        )
        self._overall: Any = None
        self._lock = threading.Lock()

    def start(self, title: str, total: int, done: int) -> None:
        self._overall = self._bar.add_task(title, total=total, completed=done)
        self._bar.start()

    def file_started(self, path: str, size: int, have: int) -> Any:
        name = path if len(path) <= 40 else "..." + path[-37:]
        return self._bar.add_task(f"  {name}", total=size, completed=have)

    def advance(self, task: Any, n: int) -> None:
        self._bar.advance(task, n)
        if self._overall is not None:
            self._bar.advance(self._overall, n)

    def file_done(self, task: Any) -> None:
        self._bar.remove_task(task)

    def note(self, text: str) -> None:
        self._bar.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        self._bar.stop()


def make_progress(enabled: bool) -> Progress:
    if not enabled:
        return Progress()
    from provision.cli.output import console

    if not console(stderr=True).is_terminal:
        return Progress()  # a log file gets the result, not a thousand redraws
    return RichProgress()
