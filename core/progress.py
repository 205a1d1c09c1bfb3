"""Progress reporting and interruption for long engine work, independent of ComfyUI.

Engine functions take ``progress: Progress | None``. A node passes one that drives ComfyUI's progress bar and
checks its interrupt flag; the headless runner and the command line pass one that prints/tqdm's.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional


class Interrupted(RuntimeError):
    """Raised inside engine loops when the user asked to stop (ComfyUI's cancel, Ctrl-C in the runner)."""


@dataclass
class Progress:
    """Callbacks for one long task. ``update(done, total)`` may raise ``Interrupted``."""

    on_update: Optional[Callable[[int, int], None]] = None
    should_stop: Optional[Callable[[], bool]] = None
    label: str = ""
    # ``log(done, total, loss=...)``: measured values of a step (training loss), for a live chart; never raises
    # ``Interrupted`` and must not fail the task (the node layer sends them to ComfyUI's editor)
    on_log: Optional[Callable[[int, int, dict], None]] = None
    _done: int = field(default=0, init=False)

    def update(self, done: int, total: int) -> None:
        self._done = done
        if self.on_update is not None:
            self.on_update(done, total)
        self.check()

    def log(self, done: int, total: int, **values: float) -> None:
        if self.on_log is not None:
            self.on_log(done, total, values)

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted(f"{self.label or 'task'} interrupted at step {self._done}")


def report(progress: Optional[Progress], done: int, total: int) -> None:
    """Report ``done`` of ``total`` to ``progress`` if one was given."""
    if progress is not None:
        progress.update(done, total)


def tqdm_progress(label: str, total: int | None = None) -> Progress:
    """A Progress that draws a tqdm bar on stderr (command line and headless runner)."""
    from tqdm import tqdm

    bar = {"bar": None}

    def on_update(done: int, tot: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=tot, desc=label, leave=False, dynamic_ncols=True)
        b = bar["bar"]
        b.total = tot
        b.n = done
        b.refresh()
        if done >= tot:
            b.close()

    return Progress(on_update=on_update, label=label)


# Where node code gets its Progress when ComfyUI is absent: the headless runner installs a factory(label) -> Progress
# for the time of a run (``headless_progress``), and ``nodes/comfy_bridge.node_progress`` asks for it here. The slot
# lives in the engine so the runner never needs to know about the node modules.
_headless_factory: Optional[Callable[[str], Progress]] = None


def headless_progress_factory() -> Optional[Callable[[str], Progress]]:
    """The factory the headless runner installed, or None (inside ComfyUI, tests, plain scripts)."""
    return _headless_factory


@contextlib.contextmanager
def headless_progress(factory: Optional[Callable[[str], Progress]]) -> Iterator[None]:
    """Install ``factory`` for node progress while the block runs; the previous one is restored afterwards."""
    global _headless_factory
    old, _headless_factory = _headless_factory, factory
    try:
        yield
    finally:
        _headless_factory = old
