"""Everything a model definition needs in one namespace: ``import dualml.nn as dnn``."""
from __future__ import annotations

from .layers import *  # noqa: F403
from .layers import BUILTIN_LAYERS, InputSpec, Layer, ParamSpec
from .module import Buffer, Module, ModuleList, Parameter, Sequential

__all__ = [c.__name__ for c in BUILTIN_LAYERS] + [
    "Buffer", "InputSpec", "Layer", "Module", "ModuleList", "ParamSpec", "Parameter", "Sequential"]
