"""The live screen: `render(state, view)` is a pure function of the pipeline's latest snapshot → a rich renderable.

rich's Live calls it on its own timer (4 Hz), so the screen never waits for inference and inference never waits for
the screen; the only thing they share is the immutable `PipelineState` the pipeline swaps in after every window.
`label_mask` turns `--only` / `--ignore` into a boolean mask over the 527 labels (validated, with a suggestion for a
misspelt name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.constrain import Constrain
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streamtag.errors import StreamtagError
from streamtag.labels import parse_label_list
from streamtag.stream.pipeline import SILENCE_DB, PipelineState

WIDTH = 80  # the whole panel fits an 80-column terminal
BAR_CELLS = 30
LEVEL_CELLS = 20
LEVEL_FLOOR_DB = -60.0
_EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass(frozen=True)
class DashboardView:
    """What does not change during a session: titles, the engine line, labels, top-k and the label filter."""

    title: str
    engine: str
    hop_duration: float
    top_k: int
    labels: tuple[str, ...]
    mask: np.ndarray | None = None  # True = may be shown
    smoothed: bool = True


# ------------------------------------------------------------------------------------------------ drawing
def bar(fraction: float, cells: int) -> str:
    """A left-aligned bar of `cells` characters at 1/8-cell resolution."""
    eighths = int(round(max(0.0, min(1.0, fraction)) * cells * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(cells)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(max(0.0, seconds), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{seconds:04.1f}" if hours else f"{minutes:02d}:{seconds:04.1f}"


def _ms(value: float | None) -> str:
    return "  –  " if value is None else f"{value:5.1f}"


def _db(value: float) -> str:
    return "  -inf" if value <= SILENCE_DB else f"{value:6.1f}"


def top_rows(state: PipelineState, view: DashboardView) -> list[tuple[str, float]]:
    """The labels the table shows: top-k of the smoothed scores among the labels the filter allows."""
    if state.result is None:
        return []
    from streamtag.results import shown_top_k

    row = state.result.smoothed if view.smoothed else state.result.scores
    return shown_top_k(row, view.top_k, view.labels, view.mask)


def render(state: PipelineState, view: DashboardView) -> RenderableType:
    """The whole screen for one snapshot (pure: same state and view, same picture)."""
    info = Table.grid(padding=(0, 1))
    info.add_column(style="bold cyan", no_wrap=True)
    info.add_column(no_wrap=True, overflow="ellipsis")
    info.add_row("engine", view.engine)
    level_fill = (state.level_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB
    peak_cell = int((state.peak_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB * LEVEL_CELLS)
    meter = list(bar(level_fill, LEVEL_CELLS))
    if 0 <= peak_cell < LEVEL_CELLS and meter[peak_cell] == " ":
        meter[peak_cell] = "│"  # peak hold marker
    level_color = "red" if state.peak_db > -1.0 else "green"
    info.add_row("level", Text.assemble((f"{_db(state.level_db)} dBFS ", ""), ("".join(meter), level_color),
                                        f" peak {_db(state.peak_db)} dBFS"))
    delay = "" if state.delay_ms is None else f" · delay {state.delay_ms:.0f} ms"
    info.add_row("infer", f"last {_ms(state.last_ms)} ms · mean {_ms(state.mean_ms)} ms{delay}")
    info.add_row("hops", f"{state.hops} every {view.hop_duration:g} s · skipped {state.skipped} · "
                         f"overflows {state.overflows} · overruns {state.overruns}")
    status = "" if state.running else " · stopped"
    info.add_row("elapsed", f"{clock(state.wall_seconds)} · audio {clock(state.audio_seconds)}{status}")

    table = Table(expand=True, box=None, padding=(0, 1), show_edge=False)
    table.add_column("label", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("score", justify="right", width=5, no_wrap=True)
    table.add_column("", width=BAR_CELLS, no_wrap=True, style="magenta")
    rows = top_rows(state, view)
    for label, score in rows:
        table.add_row(label, f"{score:.3f}", bar(score, BAR_CELLS))
    for _ in range(view.top_k - len(rows)):  # keep the height steady while the first window fills
        table.add_row(Text("waiting for the first window…" if not rows and _ == 0 else "", style="dim"), "", "")
    title = f"[bold]streamtag[/] · {view.title}"
    return Constrain(Panel(Group(info, Text(""), table), title=title, title_align="left", border_style="blue"),
                     width=WIDTH)


class Dashboard:
    """Redraw `render(get_state(), view)` at `refresh_per_second` on rich's own thread while the block runs."""

    def __init__(self, view: DashboardView, get_state: Callable[[], PipelineState], console: Console | None = None,
                 refresh_per_second: float = 4.0):
        self.view = view
        self._get_state = get_state
        self._live = Live(console=console or Console(), refresh_per_second=refresh_per_second, transient=False,
                          redirect_stdout=False, redirect_stderr=False,
                          get_renderable=lambda: render(self._get_state(), self.view))

    def __enter__(self) -> "Dashboard":
        self._live.start(refresh=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.refresh()  # the final state stays on screen
        self._live.stop()


# ------------------------------------------------------------------------------------------------ label filter
def label_mask(labels: Sequence[str], only: str | None = None, ignore: str | None = None) -> np.ndarray | None:
    """Boolean mask of the labels the table may show (None = all)."""
    if not only and not ignore:
        return None
    mask = np.zeros(len(labels), dtype=bool) if only else np.ones(len(labels), dtype=bool)
    if only:
        mask[parse_label_list(only, labels, "--only")] = True
    if ignore:
        mask[parse_label_list(ignore, labels, "--ignore")] = False
    if not mask.any():
        raise StreamtagError("--only/--ignore leave no label to show; drop some of the --ignore labels")
    mask.flags.writeable = False
    return mask
