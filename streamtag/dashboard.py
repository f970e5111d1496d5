"""The live screen: `render(state, view)` is a pure function of the pipeline's latest snapshot → a rich renderable.

rich's Live calls it on its own timer (4 Hz), so the screen never waits for inference and inference never waits for
the screen; the only thing they share is the immutable `PipelineState` the pipeline swaps in after every window.
`label_mask` turns `--only` / `--ignore` into a boolean mask over the 527 labels (validated, with a suggestion for a
misspelt name).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.constrain import Constrain
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streamtag.errors import StreamtagError
from streamtag.events.model import Event, RuleHop
from streamtag.labels import parse_label_list
from streamtag.stream.pipeline import HISTORY_SECONDS, SILENCE_DB, PipelineState

WIDTH = 80  # the whole panel fits an 80-column terminal; narrower ones lose the sparklines first
BAR_CELLS = 20
LEVEL_CELLS = 20
LEVEL_FLOOR_DB = -60.0
SPARK_CELLS = 20  # one cell per second of HISTORY_SECONDS
EVENT_ROWS = 5  # the events pane: active events first, then the last finished ones, always this many lines
_EIGHTHS = " ▏▎▍▌▋▊▉"
_SPARKS = "▁▂▃▄▅▆▇█"


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


# ------------------------------------------------------------------------------------------------ events pane
@dataclass(frozen=True)
class BoardState:
    """What the events pane shows; replaced whole after each hop, like PipelineState."""

    active: tuple[tuple[str, float, float, float], ...] = ()  # label, since (stream seconds), score, peak
    recent: tuple[Event, ...] = ()                             # the last finished, newest first
    started: int = 0
    finished: int = 0


class EventBoard:
    """An EventListener that keeps the events pane's `state` (called on the inference thread; only swaps a
    snapshot the screen thread reads)."""

    def __init__(self, keep: int = EVENT_ROWS):
        self.state = BoardState()
        self._active: dict[str, Event] = {}
        self._recent: collections.deque[Event] = collections.deque(maxlen=keep)
        self._started = self._finished = 0

    def event_started(self, event: Event) -> None:
        self._active[event.id] = event
        self._started += 1

    def event_ended(self, event: Event) -> None:
        self._active.pop(event.id, None)
        self._recent.appendleft(event)
        self._finished += 1
        active = tuple(a for a in self.state.active if a[0] != event.label)
        self.state = BoardState(active, tuple(self._recent), self._started, self._finished)

    def hop(self, time: float, level_db: float, rules: Sequence[RuleHop]) -> None:
        hops = rules.active() if hasattr(rules, "active") else [r for r in rules if r.active]
        active = tuple((r.rule, self._active[r.event_id].start, r.score, r.peak or r.score)
                       for r in hops if r.event_id in self._active)
        self.state = BoardState(active, tuple(self._recent), self._started, self._finished)

    def close(self, timeout: float) -> None:
        pass


def event_rows(board: BoardState) -> list[Text]:
    """EVENT_ROWS lines: `▶ label  since 00:12.3  now 0.62  peak 0.81` for active events, then
    `✓ 08:14:02 label  3.2 s  peak 0.81` for the last finished (clock time when live, else stream time)."""
    rows: list[Text] = []
    for label, since, score, peak in board.active[:EVENT_ROWS]:
        rows.append(Text.assemble(("▶ ", "bold red"), (f"{label[:34]:<34}", "bold"),
                                  f" since {clock(since):>9}  now {score:.2f}  peak {peak:.2f}"))
    for e in board.recent[:EVENT_ROWS - len(rows)]:
        when = e.wall_start[11:19] if e.wall_start else clock(e.start)
        length = 0.0 if e.end is None else e.end - e.start
        rows.append(Text.assemble(("✓ ", "green"), f"{when:>9} ", (f"{e.label[:34]:<34}", ""),
                                  f" {length:6.1f} s  peak {e.peak:.2f}"))
    if not rows:
        rows.append(Text("no events yet", style="dim"))
    rows += [Text("")] * (EVENT_ROWS - len(rows))
    return rows


# ------------------------------------------------------------------------------------------------ drawing
def bar(fraction: float, cells: int) -> str:
    """A left-aligned bar of `cells` characters at 1/8-cell resolution."""
    eighths = int(round(max(0.0, min(1.0, fraction)) * cells * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(cells)


def sparkline(times: Sequence[float], values: Sequence[float], end: float, cells: int = SPARK_CELLS,
              seconds: float = HISTORY_SECONDS) -> str:
    """The last `seconds` before `end` in `cells` block characters, each the highest value (0…1) of the windows in
    its slice of time; a slice no window started in repeats the one before (hops longer than a cell), and the time
    before the first window is blank."""
    width = seconds / cells
    cell_max = [-1.0] * cells
    for t, v in zip(times, values):
        c = cells - 1 - int((end - t) // width)
        if 0 <= c < cells:
            cell_max[c] = max(cell_max[c], min(1.0, max(0.0, float(v))))
    out, held = [], -1.0
    for v in cell_max:
        held = v if v >= 0 else held
        out.append(" " if held < 0 else _SPARKS[min(len(_SPARKS) - 1, int(held * len(_SPARKS)))])
    return "".join(out)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(max(0.0, seconds), 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{seconds:04.1f}" if hours else f"{minutes:02d}:{seconds:04.1f}"


def _ms(value: float | None) -> str:
    return "  –  " if value is None else f"{value:5.1f}"


def _db(value: float) -> str:
    return "  -inf" if value <= SILENCE_DB else f"{value:6.1f}"


def top_rows(state: PipelineState, view: DashboardView) -> list[tuple[str, float, int]]:
    """The labels the table shows, (label, score, column): top-k of the smoothed scores among the labels the filter
    allows."""
    if state.result is None:
        return []
    from streamtag.results import top_order

    row = state.result.smoothed if view.smoothed else state.result.scores
    return [(view.labels[i], float(row[i]), i) for i in top_order(row, view.top_k, view.mask)]


def _level_fraction(db: float) -> float:
    return (db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB


def render(state: PipelineState, view: DashboardView, board: BoardState | None = None,
           notify: str | None = None) -> RenderableType:
    """The whole screen for one snapshot (pure: same state, view, board and terminal width, same picture); `board`
    adds the events pane (--events), `notify` the notifications' line (Notifier.dashboard_line())."""
    return _Screen(state, view, board, notify)


class _Screen:
    """Chooses the layout by the width rich offers: with sparklines at 80 columns and more, without below."""

    def __init__(self, state: PipelineState, view: DashboardView, board: BoardState | None = None,
                 notify: str | None = None):
        self.state, self.view, self.board, self.notify = state, view, board, notify

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield _panel(self.state, self.view, self.board, sparklines=options.max_width >= WIDTH, notify=self.notify)


def _panel(state: PipelineState, view: DashboardView, board: BoardState | None, sparklines: bool,
           notify: str | None = None) -> RenderableType:
    end = state.history[-1].time if state.history else 0.0
    times = [r.time for r in state.history]
    info = Table.grid(padding=(0, 1))
    info.add_column(style="bold cyan", no_wrap=True)
    info.add_column(no_wrap=True, overflow="ellipsis")
    info.add_row("engine", view.engine)
    level_fill = _level_fraction(state.level_db)
    peak_cell = int(_level_fraction(state.peak_db) * LEVEL_CELLS)
    meter = list(bar(level_fill, LEVEL_CELLS))
    if 0 <= peak_cell < LEVEL_CELLS and meter[peak_cell] == " ":
        meter[peak_cell] = "│"  # peak hold marker
    level_color = "red" if state.peak_db > -1.0 else "green"
    level = Text.assemble((f"{_db(state.level_db)} dBFS ", ""), ("".join(meter), level_color),
                          f" peak {_db(state.peak_db)}")
    if sparklines:  # the unit is said once so that the level's own 20 s fit beside it
        level.append(" " + sparkline(times, [_level_fraction(r.level_db) for r in state.history], end),
                     style="green")
    else:
        level.append(" dBFS")
    info.add_row("level", level)
    delay = "" if state.delay_ms is None else f" · delay {state.delay_ms:.0f} ms"
    info.add_row("infer", f"last {_ms(state.last_ms)} ms · mean {_ms(state.mean_ms)} ms{delay}")
    info.add_row("hops", f"{state.hops} every {view.hop_duration:g} s · skipped {state.skipped} · "
                         f"overflows {state.overflows} · overruns {state.overruns}")
    status = "" if state.running else " · stopped"
    info.add_row("elapsed", f"{clock(state.wall_seconds)} · audio {clock(state.audio_seconds)}{status}")
    if board is not None:
        info.add_row("events", f"{len(board.active)} active · {board.finished} finished")
    if notify is not None:
        info.add_row("notify", notify)

    table = Table(expand=True, box=None, padding=(0, 1), show_edge=False)
    table.add_column("label", ratio=1, no_wrap=True, overflow="ellipsis")
    if sparklines:
        table.add_column(f"last {HISTORY_SECONDS:g} s", width=SPARK_CELLS, no_wrap=True, style="cyan")
    table.add_column("score", justify="right", width=5, no_wrap=True)
    table.add_column("", width=BAR_CELLS, no_wrap=True, style="magenta")
    rows = top_rows(state, view)
    for label, score, index in rows:
        history = []
        if sparklines:
            history = [sparkline(times, [(r.smoothed if view.smoothed else r.scores)[index] for r in state.history],
                                 end)]
        table.add_row(label, *history, f"{score:.3f}", bar(score, BAR_CELLS))
    for _ in range(view.top_k - len(rows)):  # keep the height steady while the first window fills
        table.add_row(Text("waiting for a window…" if not rows and _ == 0 else "", style="dim"),
                      *[""] * (len(table.columns) - 1))
    parts: list[RenderableType] = [info, Text(""), table]
    if board is not None:
        parts += [Text(""), *(Text.assemble(" ", row, no_wrap=True, overflow="ellipsis") for row in event_rows(board))]
    title = f"[bold]streamtag[/] · {view.title}"
    return Constrain(Panel(Group(*parts), title=title, title_align="left", border_style="blue"), width=WIDTH)


class Dashboard:
    """Redraw `render(get_state(), view)` at `refresh_per_second` on rich's own thread while the block runs."""

    def __init__(self, view: DashboardView, get_state: Callable[[], PipelineState], console: Console | None = None,
                 refresh_per_second: float = 4.0, board: EventBoard | None = None,
                 notify: Callable[[], str] | None = None):
        self.view = view
        self._get_state = get_state
        self._live = Live(console=console or Console(), refresh_per_second=refresh_per_second, transient=False,
                          redirect_stdout=False, redirect_stderr=False,
                          get_renderable=lambda: render(self._get_state(), self.view,
                                                        board.state if board is not None else None,
                                                        notify() if notify is not None else None))

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
