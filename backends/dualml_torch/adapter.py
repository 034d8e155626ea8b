"""``TorchBackend``: tensors, weights, hooks and autograd for torch."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

from dualml.backend import Backend
from dualml.errors import WeightsError

from . import ops
from .compress import TorchCompress
from .distributed import TorchDistributed
from .export import TorchExport
from .quantization import TorchQuantization
from .training import TorchTraining


class TorchBackend(TorchTraining, TorchDistributed, TorchExport, TorchCompress, TorchQuantization, Backend):
    name = "torch"
    hparam_ignore = frozenset({"training", "_is_full_backward_hook"})
    version = torch.__version__
    module_base = torch.nn.Module
    ops = ops
    #: torch.device of the current device, None on the CPU (the per-step path then adds no ``.to``)
    _tdev: Any = None

    # ------------------------------------------------------------------ devices
    def device_count(self) -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def local_rank(self) -> int:
        import os

        return int(os.environ.get("LOCAL_RANK", "0"))

    def set_device(self, device: Any) -> None:
        self.device = device
        if device is None or not device.is_cuda:
            self._tdev = None
            return
        self._tdev = torch.device("cuda", device.index)
        torch.cuda.set_device(self._tdev)
        if device.exact:  # float32 matmul/conv in full precision: parity.device=cuda keeps the CPU tolerances
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def to_device(self, module: Any) -> Any:
        return module.to(self._tdev) if self._tdev is not None else module

    def device_peak_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated(self._tdev)) if self._tdev is not None else None

    def container(self, kind: str, children: list[Any]) -> Any:
        return torch.nn.Sequential(*children) if kind == "sequential" else torch.nn.ModuleList(children)

    def add_weight(self, module: Any, name: str, value: np.ndarray, trainable: bool) -> None:
        t = torch.from_numpy(np.array(value, copy=True))
        if trainable:
            module.register_parameter(name, torch.nn.Parameter(t))
        else:
            module.register_buffer(name, t, persistent=True)

    def arrays(self, module: Any) -> dict[str, np.ndarray]:
        return {k: self.numpy(v).copy() for k, v in module.state_dict(keep_vars=True).items()}

    def assign(self, module: Any, values: dict[str, np.ndarray]) -> None:
        state = module.state_dict(keep_vars=True)
        for k, v in values.items():
            if k not in state or tuple(state[k].shape) != tuple(v.shape):
                raise WeightsError(f"torch {type(module).__name__}: no tensor '{k}' of shape {list(v.shape)}")
        with torch.no_grad():
            for k, v in values.items():
                state[k].copy_(torch.from_numpy(np.array(v, order="C")))  # keeps 0-d

    def grads(self, module: Any) -> dict[str, np.ndarray]:
        return {k: (self.numpy(p.grad).copy() if p.grad is not None else np.zeros(tuple(p.shape), "float32"))
                for k, p in module.named_parameters()}

    def tensor(self, value: np.ndarray, requires_grad: bool = False, copy: bool = True) -> Any:
        # from_numpy shares memory: without a copy a later write to the array would change the tensor
        shareable = not copy and isinstance(value, np.ndarray) and value.flags.writeable and value.flags.c_contiguous
        t = torch.from_numpy(value if shareable else np.array(value, copy=True))
        if self._tdev is not None:
            t = t.to(self._tdev, non_blocking=False)
        return t.requires_grad_(True) if requires_grad and t.is_floating_point() else t

    def numpy(self, tensor: Any) -> np.ndarray:
        t = tensor.detach()
        if not t.is_cpu:
            t = t.cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def memory_order(self, tensor: Any) -> str:
        # a strided view (split, permute) is still logically row-major; channels-last is not
        if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(
                memory_format=torch.channels_last):
            return "channels-last"
        return "row-major"

    def set_train(self, module: Any, mode: bool) -> None:
        module.train(mode)

    def sublayers(self, layer: Any) -> list[tuple[str, Any]]:
        return list(layer.named_modules())

    def to_dtype(self, module: Any, dtype: str) -> None:
        module.to(getattr(torch, dtype))

    def add_hook(self, layer: Any, when: str, fn: Callable[..., Any]) -> Any:
        return layer.register_forward_pre_hook(fn) if when == "pre" else layer.register_forward_hook(fn)

    def threads(self) -> int:
        return int(torch.get_num_threads())

    def set_threads(self, n: int) -> int:
        torch.set_num_threads(int(n))
        return self.threads()

    def no_grad(self) -> AbstractContextManager:
        return torch.no_grad()

    def backward(self, outputs: list[Any], grad_outputs: list[np.ndarray]) -> None:
        torch.autograd.backward(outputs, [torch.from_numpy(np.array(g, dtype=g.dtype, ndmin=0)).to(o.device)
                                          for o, g in zip(outputs, grad_outputs)])

    def input_grad(self, tensor: Any) -> np.ndarray | None:
        return None if tensor.grad is None else self.numpy(tensor.grad).copy()

    def seed(self, seed: int) -> None:
        # dropout draws from the default CPU generator (on GPU from CUDA's): seed those directly.
        # torch.manual_seed also visits the mps/xpu/custom-device hooks: 160 us idle, up to 650 us on a
        # busy CPU, paid every step because the Trainer re-seeds from (seed, step) (bench_trainer)
        torch.default_generator.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)


backend = TorchBackend()

