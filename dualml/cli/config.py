"""``dualml config``: print the resolved config.

Prints what every other command would get, after ``backend=auto`` is resolved.
"""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from .log import result

#: the one-line description in ``dualml --help``
HELP = 'print the resolved config'
#: config sections (or keys) ``dualml config --help`` lists
KEYS = ()
SECTION = None


def cmd_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Print the config this command line resolves to (``backend=auto`` already resolved)."""
    result(OmegaConf.to_yaml(cfg))
    return 0
