"""Silencing framework chatter around one call: PaddleSlim, paddle2onnx and the torch exporters
print progress and log at INFO on every call, which would bury dualml's own one-line summaries.
No framework import: the adapters name their loggers."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def quiet(logger_prefixes: Sequence[str] = (), level: int = logging.WARNING) -> Iterator[None]:
    """Within the block: stdout is swallowed, and the named loggers (and every existing logger under
    them) drop records below ``level``; with no names, logging as a whole does. Restored after."""
    if not logger_prefixes:
        previous = logging.root.manager.disable
        logging.disable(level - 10)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.disable(previous)
        return
    names = set(logger_prefixes) | {n for n in list(logging.root.manager.loggerDict)
                                    if any(n.startswith(p) for p in logger_prefixes)}
    loggers = [logging.getLogger(n) for n in sorted(names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar, unless the caller or the command line (``dualml -q`` sets ``DUALML_PROGRESS=0``) turned
    bars off. Why here: tqdm's own ``TQDM_DISABLE`` loses to an explicit ``disable=``, so one place decides."""
    from tqdm import tqdm

    off = not enabled or os.environ.get("DUALML_PROGRESS", "1") == "0"
    return tqdm(iterable, disable=off, **kwargs)
