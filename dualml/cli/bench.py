"""``dualml bench``: the command (its measuring code lives in dualml.evidence.bench)."""
from ..evidence.bench import cmd_bench

__all__ = ["cmd_bench"]
