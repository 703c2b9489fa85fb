"""The command line's terminal: logs on stderr with levels, progress inside long steps, results on stdout.

- **Logs** (stderr): the ``geofed_secure`` loggers through one handler. Default: progress and notices (INFO);
  ``-v`` adds details (DEBUG) and third-party deprecation warnings; ``-q`` shows only warnings and errors, ``-qq``
  only errors. Python warnings are routed into the same handler.
- **Progress** (stderr): on a terminal, rich progress bars with elapsed and remaining time for the feature encoding
  of each modality, the rounds of the run, the nodes of the current round and the local steps of the node training
  now. Elsewhere (a file, CI) plain lines: every node and round, and inside a long step a line at most every
  :data:`PLAIN_EVERY` seconds.
- **Results** (stdout): the command's result is its last line, one JSON object. With ``--json`` stdout is a JSON
  Lines stream for machines: events (``{"event": "round_done", ...}``, warnings as ``{"event": "log", ...}``) and
  then the result (``"event": "result"``), or ``"event": "error"`` with the exit code.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOGGER = "geofed_secure"
PLAIN_EVERY = 30.0  # seconds between plain progress lines inside one long step (no TTY)
_STYLE = {logging.DEBUG: "dim", logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}

log = logging.getLogger(LOGGER)


def level_for(verbosity: int) -> int:
    """-qq: errors only; -q: warnings; default: progress (INFO); -v: details (DEBUG)."""
    return {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(-2, min(verbosity, 1)), logging.DEBUG)


class _ConsoleHandler(logging.Handler):
    """Log records as lines on the terminal's console (above any live progress bars)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _PREFIX.get(record.levelno, "") + record.getMessage()
            if record.exc_info and record.levelno >= logging.ERROR:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.console.print(text, style=_STYLE.get(record.levelno), markup=False, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise into the run (logging.Handler's own convention)
            self.handleError(record)


class _JsonHandler(logging.Handler):
    """Warnings and errors as ``{"event": "log", ...}`` lines on stdout (``--json``)."""

    def __init__(self, terminal: Terminal) -> None:
        super().__init__(logging.WARNING)
        self.terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        self.terminal.event("log", level=record.levelname.lower(), logger=record.name, message=record.getMessage())


class Terminal:
    """One command's terminal: ``verbosity`` (-q/-v), ``json_events`` (--json); ``tty`` None detects a terminal."""

    def __init__(self, *, verbosity: int = 0, json_events: bool = False, stdout: TextIO | None = None,
                 stderr: TextIO | None = None, tty: bool | None = None) -> None:
        self.verbosity = verbosity
        self.level = level_for(verbosity)
        self.json_events = json_events
        self.stdout = stdout or sys.stdout
        self.console = Console(file=stderr or sys.stderr, highlight=False, soft_wrap=True, force_terminal=tty)
        self.bars = self.console.is_terminal and self.level <= logging.INFO
        self.progress: Progress | None = None

    @contextmanager
    def session(self) -> Iterator[Terminal]:
        """Route the library's logs and Python warnings here for the block (restored afterwards)."""
        root = logging.getLogger(LOGGER)
        handlers: list[logging.Handler] = [_ConsoleHandler(self.console)]
        if self.json_events:
            handlers.append(_JsonHandler(self))
        handlers[0].setLevel(self.level)
        saved = root.level, root.propagate
        root.setLevel(min(self.level, logging.WARNING))
        root.propagate = False
        for handler in handlers:
            root.addHandler(handler)
        py_warnings = logging.getLogger("py.warnings")
        warnings_handler = _ConsoleHandler(self.console)
        warnings_handler.setLevel(max(logging.WARNING, self.level))
        py_warnings.addHandler(warnings_handler)
        logging.captureWarnings(True)
        with warnings.catch_warnings():
            if self.verbosity < 1:  # dependencies' deprecations are for their developers, not for operators
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
            try:
                yield self
            finally:
                logging.captureWarnings(False)
                py_warnings.removeHandler(warnings_handler)
                for handler in handlers:
                    root.removeHandler(handler)
                root.setLevel(saved[0])
                root.propagate = saved[1]

    @contextmanager
    def live(self) -> Iterator[None]:
        """Progress bars for the block (on a terminal, unless quiet); plain lines otherwise."""
        if not self.bars:
            yield
            return
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("remaining"), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        try:
            with self.progress:
                yield
        finally:
            self.progress = None

    def event(self, name: str, **fields: Any) -> None:
        """A machine-readable event on stdout (``--json`` only)."""
        if self.json_events:
            self._write({"event": name, **fields})

    def result(self, payload: dict[str, Any]) -> None:
        """The command's result: the last line of stdout, always."""
        self._write({"event": "result", **payload} if self.json_events else payload)

    def error(self, exc: BaseException, *, exit_code: int, internal: bool = False) -> None:
        """An error on stderr (a traceback only with -v for internal errors), and as JSON on stdout with --json."""
        kind = type(exc).__name__
        if internal:
            self.console.print(f"internal error ({kind}): {exc}\nthis is a bug in geofed; "
                               + ("the traceback follows" if self.verbosity > 0 else "rerun with -v for the traceback"),
                               style="red", markup=False)
            if self.verbosity > 0:
                self.console.print_exception()
        else:
            self.console.print(f"error ({kind}): {exc}", style="red", markup=False)
        self.event("error", status="error", exit_code=exit_code, error=kind, message=str(exc))

    def _write(self, payload: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(payload, default=str) + "\n")
        self.stdout.flush()


class ConsoleReporter:
    """Progress of a run on a :class:`Terminal`: a :class:`~geofed_secure.runtime.round.Reporter` plus the feature
    encoding (:meth:`features`) and each node's local steps (:meth:`node_step`, wired to ``Node.step_hook``).

    It shows only what the server may know (node lines carry what the round hands it) and the operator's own
    process (which node of this process is training now)."""

    def __init__(self, terminal: Terminal | None = None, *, nodes: int = 0, steps: int = 0) -> None:
        self.terminal = terminal or Terminal()
        self.nodes = nodes
        self.steps = steps
        self._t0 = time.perf_counter()
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None
        self._last_line = 0.0
        self._round = 0
        self._features_shown: dict[str, int] = {}

    # -- bars ------------------------------------------------------------------------------------------------------
    def _task(self, key: str, description: str, total: int, *, reset: bool = False) -> None:
        progress = self.terminal.progress
        if progress is None:
            return
        if key not in self._tasks:
            self._tasks[key] = progress.add_task(description, total=total)
        elif reset:
            progress.reset(self._tasks[key], total=total, description=description)
        else:
            progress.update(self._tasks[key], description=description, total=total)

    def _advance(self, key: str, completed: int | None = None) -> None:
        progress = self.terminal.progress
        if progress is not None and key in self._tasks:
            if completed is None:
                progress.advance(self._tasks[key])
            else:
                progress.update(self._tasks[key], completed=completed)

    # -- data ------------------------------------------------------------------------------------------------------
    def features(self, modality: str, done: int, total: int) -> None:
        """Feature encoding progress (a cache hit reports once, at the end)."""
        self.terminal.event("features", modality=modality, done=done, total=total)
        self._task(f"features/{modality}", f"features {modality}", total)
        self._advance(f"features/{modality}", done)
        if self.terminal.progress is None and (done == total or done // 500 > self._features_shown.get(modality, 0)):
            log.info("  features %s: %d/%d", modality, done, total)
            self._features_shown[modality] = done // 500

    # -- the round (Reporter) -------------------------------------------------------------------------------------
    def round_started(self, round_: int, total: int) -> None:
        self._round = round_
        self.terminal.event("round_started", round=round_, rounds=total)
        if self.terminal.progress is not None:  # the data is ready: its bars give way to the run's
            for key in [k for k in self._tasks if k.startswith("features/")]:
                self.terminal.progress.update(self._tasks.pop(key), visible=False)
        self._task("rounds", "rounds", total)
        self._task("nodes", f"round {round_}: nodes", self.nodes, reset=True)
        log.info("round %d/%d", round_, total)

    def node_step(self, node_id: str, step: int, steps: int) -> None:
        """A node finished local step ``step`` of ``steps`` (this process's own training, not a server observation)."""
        now = time.perf_counter()
        if node_id != self._current:
            self._current = node_id
            self._last_line = now
            self.terminal.event("node_started", round=self._round, node=node_id)
            self._task("steps", f"  {node_id}: local steps", steps, reset=True)
            log.debug("  %s training", node_id)
        self.terminal.event("node_step", round=self._round, node=node_id, step=step, steps=steps)
        self._advance("steps", step)
        if self.terminal.progress is None and now - self._last_line >= PLAIN_EVERY and step < steps:
            self._last_line = now
            log.info("  %s: local step %d/%d", node_id, step, steps)

    def node_done(self, round_: int, node_id: str, info: str) -> None:
        self._current = None
        self.terminal.event("node_done", round=round_, node=node_id, info=info)
        self._advance("nodes")
        log.info("  %-22s %s", node_id, info)

    def round_done(self, round_: int, line: str) -> None:
        elapsed = time.perf_counter() - self._t0
        self.terminal.event("round_done", round=round_, line=line, elapsed_s=round(elapsed, 1))
        self._advance("rounds")
        log.info("  %s (elapsed %.0f s)", line, elapsed)

    def log(self, message: str) -> None:
        self.terminal.event("notice", message=message)
        log.info("  %s", message)
