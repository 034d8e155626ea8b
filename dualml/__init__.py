"""dualml: write a model once, run it natively on PyTorch or PaddlePaddle.

Importing this package imports no framework: adapters load on first use of a backend.

It does import Python's ``zlib``, on purpose and first: paddle 2.6 (then paddleslim) segfaults in
zlib's ``inflateReset2`` unless Python's own ``zlib`` is loaded before the first ``import paddle``
(shared STACK.md). This is the one place that guard lives. Every entry point imports ``dualml``
before paddle: the CLI (``python -m dualml``), the adapter package (``dualml_paddle/__init__``
imports ``dualml`` first), the test suites (the root ``conftest.py``) and the benchmarks
(through ``benchmarks/_common.py`` or ``dualml`` itself).
"""
from __future__ import annotations

import zlib  # noqa: F401  - must precede the first `import paddle` (see the module docstring)

from . import nn
from .backend import Rule, available_backends, get_backend, register_layer
from .build import (
    LoadReport,
    build,
    check_weights,
    convert,
    export_native,
    get_grads,
    get_weights,
    native_leaves,
    set_weights,
)
from .errors import BackendError, ConfigError, DualmlError, LayerInputError, WeightsError, WeightsFileError
from .importing import ImportReport, WeightsWarning, import_native
from .module import Buffer, Module, ModuleList, Parameter, Sequential, init_weights, manifest
from .version import __version__ as __version__


def __getattr__(name: str):  # noqa: ANN202 - the training API loads on first use, keeping `import dualml` light
    if name == "fit":
        from .train.api import fit
        return fit
    if name == "Trainer":
        from .train.trainer import Trainer
        return Trainer
    if name == "data":  # shard sets (numpy only): dualml.data.write_shards(x, y, dir, shard_size)
        import importlib
        return importlib.import_module(".data", __name__)
    raise AttributeError(f"module 'dualml' has no attribute {name!r}")


__all__ = [
    "BackendError", "Buffer", "ConfigError", "DualmlError", "ImportReport", "LayerInputError", "LoadReport",
    "Module", "ModuleList", "Parameter", "Rule", "Sequential", "WeightsError", "WeightsFileError", "WeightsWarning",
    "available_backends", "build", "check_weights", "convert", "export_native", "get_backend", "get_grads",
    "get_weights", "import_native", "init_weights", "manifest", "native_leaves", "nn", "register_layer", "set_weights",
    "Trainer", "fit",
]
