"""A rich display fed by `ProgressEvent`s: a spinner line for the agents' stages and a bar for every denoising
loop. The API knows nothing of it; the CLI passes it as the `on_progress` callback."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ditflow.schemas import ProgressEvent

STAGE_TEXT = {"parse": "reading the request", "plan": "planning", "execute": "running tools",
              "verify": "checking the outputs", "repair": "repairing", "article": "writing the article",
              "save": "saving", "done": "done", "error": "error"}


class RichProgress:
    """`with RichProgress() as show: session.chat(..., on_progress=show)`.

    With `notices`, an event marked `notice` (an LLM fallback, a referee overrule, a part of the request left out)
    is also printed as a line that stays above the display; chat leaves it off, since it shows a turn's notes after
    the turn."""

    def __init__(self, console: Console | None = None, enabled: bool = True, transient: bool = False,
                 notices: bool = False):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.notices = notices
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                                 transient=transient, disable=not enabled)
        self._stage = None
        self._bar = None
        self._bar_key = None
        self._loops: dict[str, int] = {}  # denoising loops per label: compose draws an output in several

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        self._stage = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc) -> None:
        if self._stage is not None:
            self.progress.update(self._stage, total=1, completed=1)
        self.progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled or self._stage is None:
            return
        if event.stage == "denoise" and event.total:
            key = (event.output, event.total)
            if self._bar is None or key != self._bar_key or event.step < self.progress.tasks[self._bar].completed:
                if self._bar is not None:  # a new loop: keep the finished bar on screen, start another
                    self.progress.update(self._bar, completed=self.progress.tasks[self._bar].total)
                label = " · ".join(filter(None, [f"output {event.output}" if event.output else "denoising",
                                                 event.message]))
                self._loops[label] = self._loops.get(label, 0) + 1
                if self._loops[label] > 1:
                    label += f", pass {self._loops[label]}"
                self._bar = self.progress.add_task(label, total=event.total)
                self._bar_key = key
            self.progress.update(self._bar, completed=event.step)
            return
        if event.notice and self.notices:
            self.console.print(f"note: {event.message}", style="yellow", markup=False, highlight=False)
        text = STAGE_TEXT.get(event.stage, event.stage)
        if event.stage == "error":  # the caller prints the message itself, whole, once the display is gone
            self.progress.update(self._stage, description="stopped")
            return
        self.progress.update(self._stage, description=f"{text}: {event.message}" if event.message else text)
