"""What a command says, and where the frameworks' chatter goes.

Why a module of its own: a user running ``dualml train`` wants dualml's few lines, not paddle's
BatchNorm notice, torch's export FutureWarnings or glog's ``New Executor is Running`` in the middle of a
progress bar. So the command line

- speaks through ``logging`` (logger ``dualml``): ``say`` for what happened (hidden by ``-q``),
  ``result`` for where the report went (kept by ``-q``), warnings and errors always;
- shows dualml's own warnings (:class:`~dualml.errors.DualmlWarning`) as one ``warning:`` line and
  keeps every other Python warning (the frameworks') out of the terminal, in the command's log;
- asks glog (paddle's C++ logging) for errors only, before paddle is imported;
- writes everything, chatter included, to ``dualml.log`` in the folder the command reported into;
- routes console lines through ``tqdm.write`` so they never break a progress bar.

``-v`` shows all of it on the terminal too, and tracebacks. The library itself (``dualml.fit``, ``build``)
configures nothing: a program importing dualml keeps its own logging and warning settings.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, TextIO

from ..checkpoint import atomic_write_text
from ..errors import DualmlWarning
from ..version import __version__

#: "where the report went": shown even with ``-q`` (between INFO and WARNING)
RESULT = 25
logging.addLevelName(RESULT, "RESULT")
#: the environment variable launched workers read, so ``-q``/``-v`` reach every rank
VERBOSITY_ENV = "DUALML_VERBOSITY"
QUIET, NORMAL, VERBOSE = -1, 0, 1

log = logging.getLogger("dualml")
chatter = logging.getLogger("dualml.chatter")  # framework warnings: kept in the log, shown with -v


class _Console(logging.Handler):
    """One line per record through ``tqdm.write`` (a bar in progress is redrawn below it). Results go to
    stdout and everything else to stderr, as Unix tools do, so ``dualml predict ... > out.txt`` or
    ``dualml config > cfg.yaml`` capture the answer alone; warnings and errors carry their level."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            msg = record.getMessage()
            stream: TextIO = sys.stdout if record.levelno == RESULT else sys.stderr
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname.lower()}: {msg}"
            tqdm.write(msg, file=stream)
            stream.flush()  # a server's "serving on ..." line must reach a pipe now, not at exit
        except Exception:  # a closed pipe must not turn a finished command into a traceback
            self.handleError(record)


class _Memory(logging.Handler):
    """Every record of this command, formatted, until the command says which folder it reported into."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class Session:
    """One command's logging: console verbosity, the warnings hook, glog, and the ``dualml.log`` file."""

    def __init__(self, verbosity: int, argv: list[str]) -> None:
        self.verbosity = verbosity
        self.folder: Path | None = None
        self.log_name = "dualml.log"
        self.memory = _Memory()
        self.console = _Console({QUIET: RESULT, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}[verbosity])
        if verbosity < VERBOSE:
            self.console.addFilter(lambda r: not r.name.startswith(chatter.name))
        self._saved: tuple[Any, ...] = ()
        self._env: dict[str, str | None] = {}
        self.memory.lines.append(f"dualml {__version__}: dualml {' '.join(argv)}")

    def __enter__(self) -> Session:
        self._env = {k: os.environ.get(k) for k in (VERBOSITY_ENV, "GLOG_minloglevel", "DUALML_PROGRESS")}
        os.environ[VERBOSITY_ENV] = str(self.verbosity)
        if self.verbosity < VERBOSE:
            os.environ.setdefault("GLOG_minloglevel", "2")  # glog reads it when paddle loads: errors only
        if self.verbosity == QUIET:
            os.environ["DUALML_PROGRESS"] = "0"
        self._saved = (log.level, log.propagate, warnings.showwarning)
        log.setLevel(logging.DEBUG)
        log.propagate = False
        log.addHandler(self.console)
        log.addHandler(self.memory)
        warnings.showwarning = self._showwarning
        return self

    def __exit__(self, *exc: object) -> None:
        global _current
        _current = None
        log.removeHandler(self.console)
        log.removeHandler(self.memory)
        log.setLevel(self._saved[0])
        log.propagate = self._saved[1]
        warnings.showwarning = self._saved[2]
        for k, v in self._env.items():  # main() called twice in one process (tests) must not leak -v
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.flush()

    def _showwarning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: TextIO | None = None, line: str | None = None) -> None:
        """dualml's own warnings: one line for the user; anyone else's: the log (the terminal with -v)."""
        if issubclass(category, DualmlWarning):
            log.warning(str(message))
        else:
            chatter.warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)

    def keep_in(self, folder: str | Path, name: str = "dualml.log") -> None:
        """The folder this command reported into: ``folder/name`` gets every line of the command."""
        self.folder, self.log_name = Path(folder), name

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / self.log_name

    def flush(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_text(self.path, "\n".join(self.memory.lines) + "\n")
        except OSError as exc:  # the log is a convenience: losing it must not fail a finished command
            sys.stderr.write(f"warning: could not write {self.path}: {exc}\n")

    def failure(self, exc: BaseException) -> str:
        """The one line for an unexpected exception (the traceback goes to the log; to the terminal with -v)."""
        self.memory.lines.append("".join(traceback.format_exception(exc)).rstrip())
        where = f"; the traceback is in {self.path}" if self.path else ""
        return (f"error: {type(exc).__name__}: {exc} (an unexpected failure, not bad input; "
                f"run with -v for the traceback{where})")


_current: Session | None = None


def session(verbosity: int, argv: list[str]) -> Session:
    """Start the command's logging (``with session(...)``); :func:`keep_in` then names its folder."""
    global _current
    _current = Session(verbosity, argv)
    return _current


def keep_in(folder: str | Path, name: str = "dualml.log") -> None:
    """Record that this command reports into ``folder``; a no-op when no session runs (library use)."""
    if _current is not None:
        _current.keep_in(folder, name)


def verbosity() -> int:
    """QUIET, NORMAL or VERBOSE for the command running now (NORMAL outside the command line)."""
    return NORMAL if _current is None else _current.verbosity


def _emit(level: int, msg: str, args: tuple[Any, ...]) -> None:
    if _current is None:  # a command called from Python (tests, notebooks): plain lines, as print would
        _Console(logging.DEBUG).handle(log.makeRecord(log.name, level, "", 0, msg, args, None))
    else:
        log.log(level, msg, *args)


def say(msg: str, *args: Any) -> None:
    """A line about what happened (stderr; hidden with ``-q``)."""
    _emit(logging.INFO, msg, args)


def result(msg: str, *args: Any) -> None:
    """Where the report went, or the answer a command exists for (stdout; shown even with ``-q``)."""
    _emit(RESULT, msg, args)


def verbosity_from_env() -> int:
    """The verbosity a launched worker inherits from the command that launched it."""
    try:
        return max(QUIET, min(VERBOSE, int(os.environ.get(VERBOSITY_ENV, NORMAL))))
    except ValueError:
        return NORMAL


def warn(msg: str, *args: Any) -> None:
    """Something the user should read (``warning: ...`` on stderr, shown even with ``-q``)."""
    _emit(logging.WARNING, msg, args)


def error(msg: str, *args: Any) -> None:
    """A failed check (``error: ...`` on stderr, always shown); the command then exits 1."""
    _emit(logging.ERROR, msg, args)
