"""Errors that name the fix.

Every error dualml raises on bad input derives from :class:`DualmlError`, so the CLI can print it
as one line and exit 2 instead of dumping a traceback at the user.
"""
from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any


def is_int(v: Any) -> bool:
    """An integer config value; ``True``/``False`` are not (YAML's ``yes`` must not pass as 1)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """A finite real config value, booleans excluded (``.nan``/``.inf`` in YAML are refused)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


class DualmlError(Exception):
    """Bad input or an unsupported request; the message says what is allowed."""


class DualmlWarning(UserWarning):
    """Something the user should know that is not an error (the command line shows these as one line
    and keeps the frameworks' own warnings out of the terminal)."""


class UserCodeError(DualmlError):
    """The user's own code (a ``data.hook``, a custom layer) raised: the message names that code, the
    exception and where it was raised; the original stays as ``__cause__`` (``dualml -v`` prints its
    traceback)."""

    @classmethod
    def wrap(cls, what: str, exc: BaseException) -> UserCodeError:
        """``what`` raised ``exc``: one line with the innermost frame of the traceback (the user's line)."""
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        if isinstance(exc, SyntaxError) and exc.filename:
            at = f" at {exc.filename}:{exc.lineno}"
        else:
            at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        message = str(exc).splitlines()[0] if str(exc) else ""
        return cls(f"{what} raised {type(exc).__name__}{': ' + message if message else ''}{at} "
                   "(your code, not dualml's; run with -v for the traceback)")


class ConfigError(DualmlError, ValueError):
    """A config key or value that does not exist or is not allowed."""


class WeightsError(DualmlError, ValueError):
    """Canonical weights that do not fit a model (missing, unexpected, wrong shape or dtype)."""


class WeightsFileError(DualmlError, OSError):
    """A weights file that cannot be trusted: truncated, tampered or not a dualml file."""


class DiskFullError(DualmlError, OSError):
    """No space left (or quota exhausted) while writing a file: one line naming the file (exit 2);
    the atomic writer removed its temp file, so the previous version of the file is intact. ``errno``
    stays the system's (ENOSPC or EDQUOT) for code that tests it on any OSError."""


class LayerInputError(DualmlError, ValueError):
    """A layer received an input whose shape or dtype it cannot take."""


class BackendError(DualmlError, RuntimeError):
    """A backend that is unknown, not installed, or lacks an implementation for a layer."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest allowed spelling, or '' when none is close."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def not_allowed(what: str, value: object, allowed: Iterable[str]) -> str:
    """One-line message: the key, the value given, what is allowed and the nearest match."""
    allowed = sorted(str(a) for a in allowed)
    return f"{what}={value!s} is not allowed; allowed: {', '.join(allowed)}{did_you_mean(str(value), allowed)}"


def check_keys(section: str, given: Iterable[str], allowed: Iterable[str], context: str = "") -> None:
    """Reject the first key of ``given`` not in ``allowed``, naming it in full (``section.key``), the
    nearest spelling and every allowed key; ``context`` says what the allowed set depends on."""
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            full = [f"{section}.{k}" for k in allowed]
            raise ConfigError(f"unknown config key '{section}.{key}'{context}{did_you_mean(f'{section}.{key}', full)}; "
                              f"allowed: {', '.join(full)}")


class ExportError(DualmlError, RuntimeError):
    """An exporter could not turn the model into ONNX; the message names the exporter and what to try."""


class VerificationError(DualmlError, RuntimeError):
    """An exported file runs but disagrees with the eager model beyond tolerance (a failed check, exit 1)."""
