"""One progress bar over a whole corpus: files done, audio hours done of the total, real-time factor, time left.

Shared by the local executor and the Ray driver (both call `advance` with scored audio seconds and `finished` with
each file's Outcome). Drawn on stderr, only on a terminal, and gone when the run ends.
"""

from __future__ import annotations

import time as clock

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class CorpusProgress:
    """Context manager: `advance(seconds)` as audio is scored, `finished(ok)` as each file completes."""

    def __init__(self, files: int, seconds: float, enabled: bool = True):
        self.files, self.seconds = files, max(float(seconds), 0.0)
        self.done_files = self.failed = 0
        self.done_seconds = 0.0
        self._began = clock.perf_counter()
        console = Console(stderr=True)
        self._bar = Progress(
            TextColumn("[bold]{task.fields[files]}"),
            BarColumn(),
            TextColumn("{task.fields[hours]}"),
            TextColumn("{task.fields[rtf]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not (enabled and console.is_terminal),
        )
        self._task = None

    def __enter__(self) -> "CorpusProgress":
        self._bar.__enter__()
        self._task = self._bar.add_task("tag", total=self.seconds or None, **self._fields())
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    @property
    def realtime_factor(self) -> float:
        """Audio seconds scored per wall-clock second so far."""
        elapsed = clock.perf_counter() - self._began
        return self.done_seconds / elapsed if elapsed > 0 else 0.0

    def _fields(self) -> dict:
        failed = f", {self.failed} failed" if self.failed else ""
        return {"files": f"{self.done_files}/{self.files} files{failed}",
                "hours": f"{self.done_seconds / 3600:.2f}/{self.seconds / 3600:.2f} h audio",
                "rtf": f"{self.realtime_factor:.1f}× real time" if self.done_seconds else ""}

    def advance(self, seconds: float) -> None:
        self.done_seconds += seconds
        self._bar.update(self._task, completed=self.done_seconds, **self._fields())

    def finished(self, ok: bool) -> None:
        self.done_files += 1
        self.failed += 0 if ok else 1
        self._bar.update(self._task, **self._fields())
