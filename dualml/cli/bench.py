"""``dualml bench``: the command (its measuring code lives in dualml.bench)."""
from ..bench import cmd_bench

__all__ = ["cmd_bench"]
