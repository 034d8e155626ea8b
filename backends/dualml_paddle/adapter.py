"""``PaddleBackend``: tensors, weights, hooks and autograd for paddle (dygraph)."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import paddle

from dualml.backend import Backend
from dualml.errors import WeightsError

from . import ops
from .compress import PaddleCompress
from .distributed import PaddleDistributed
from .export import PaddleExport
from .layers import FLOAT32_CONSTANTS
from .quantization import PaddleQuantization
from .training import PaddleTraining

# CPU until a Trainer asks for a GPU (trainer.device): parity, export and estimates stay on the host
paddle.set_device("cpu")


class PaddleBackend(PaddleTraining, PaddleDistributed, PaddleExport, PaddleCompress, PaddleQuantization, Backend):
    name = "paddle"
    hparam_ignore = frozenset({"training", "_full_name", "_built", "_dtype", "_init_in_dynamic_mode",
                               "_cast_to_low_precison", "name", "_name", "_weight_attr", "_bias_attr",
                               "_param_attr", "could_use_cudnn", "_use_cudnn"})
    version = paddle.__version__
    _threads: int | None = None
    float32_constants = FLOAT32_CONSTANTS
    module_base = paddle.nn.Layer
    ops = ops

    # ------------------------------------------------------------------ devices
    def device_count(self) -> int:
        return paddle.device.cuda.device_count() if paddle.device.is_compiled_with_cuda() else 0

    def local_rank(self) -> int:
        import os

        return int(os.environ.get("PADDLE_LOCAL_RANK", "0"))

    def set_device(self, device: Any) -> None:
        # paddle's place is process-wide: new tensors and parameters go there (``gpu:N`` is paddle's cuda:N)
        self.device = device
        paddle.set_device(f"gpu:{device.index}" if device is not None and device.is_cuda else "cpu")

    def to_device(self, module: Any) -> Any:
        if self.device is not None and self.device.is_cuda:
            module.to(device=f"gpu:{self.device.index}")
        return module

    def device_peak_bytes(self) -> int | None:
        if self.device is None or not self.device.is_cuda:
            return None
        return int(paddle.device.cuda.max_memory_allocated(self.device.index))

    def container(self, kind: str, children: list[Any]) -> Any:
        return paddle.nn.Sequential(*children) if kind == "sequential" else paddle.nn.LayerList(children)

    def add_weight(self, module: Any, name: str, value: np.ndarray, trainable: bool) -> None:
        if trainable:
            p = module.create_parameter(list(value.shape), dtype=str(value.dtype),
                                        default_initializer=paddle.nn.initializer.Assign(value))
            module.add_parameter(name, p)
        else:
            module.register_buffer(name, paddle.to_tensor(np.array(value, copy=True)), persistable=True)

    def arrays(self, module: Any) -> dict[str, np.ndarray]:
        return {k: self.numpy(v).copy() for k, v in module.state_dict().items()}

    def assign(self, module: Any, values: dict[str, np.ndarray]) -> None:
        state = module.state_dict()
        for k, v in values.items():
            if k not in state or tuple(state[k].shape) != tuple(v.shape):
                raise WeightsError(f"paddle {type(module).__name__}: no tensor '{k}' of shape {list(v.shape)}")
        for k, v in values.items():
            state[k].set_value(np.array(v, order="C"))

    def grads(self, module: Any) -> dict[str, np.ndarray]:
        return {k: (self.numpy(p.grad).copy() if p.grad is not None else np.zeros(p.shape, self.dtype_name(p)))
                for k, p in module.named_parameters()}

    def tensor(self, value: np.ndarray, requires_grad: bool = False, copy: bool = True) -> Any:
        # paddle.to_tensor always copies a numpy array into its own memory, so ``copy`` changes nothing here
        value = np.asarray(value)
        return paddle.to_tensor(value, stop_gradient=not (requires_grad and np.issubdtype(value.dtype, np.floating)))

    def numpy(self, tensor: Any) -> np.ndarray:
        # paddle hands bfloat16 out as its uint16 bit pattern; checking the numpy dtype is ~10x cheaper
        # than comparing paddle dtypes (1.5 us), which this per-step call would pay every time
        out = tensor.numpy()
        return out if out.dtype != np.uint16 else tensor.astype("float32").numpy()

    def memory_order(self, tensor: Any) -> str:
        # paddle 2.6 has no channels-last tensor format; views (transpose) stay logically row-major
        return "row-major"

    def set_train(self, module: Any, mode: bool) -> None:
        module.train() if mode else module.eval()

    def sublayers(self, layer: Any) -> list[tuple[str, Any]]:
        return list(layer.named_sublayers(include_self=True))

    def to_dtype(self, module: Any, dtype: str) -> None:
        # floating tensors only: ``Layer.to(dtype=)`` also casts the RNNs' uninitialised uint8
        # ``_dropout_state`` buffer and fails ("PreconditionNotMet ... memory's size is 0")
        module._to_impl(dtype=dtype, floating_only=True, include_sublayers=True)

    def add_hook(self, layer: Any, when: str, fn: Callable[..., Any]) -> Any:
        return layer.register_forward_pre_hook(fn) if when == "pre" else layer.register_forward_post_hook(fn)

    def threads(self) -> int:
        # paddle has no getter: what set_threads last set, else OMP_NUM_THREADS (paddle sets it, to 1 unless
        # given, on import)
        import os

        return self._threads or int(os.environ.get("OMP_NUM_THREADS", "0"))

    def set_threads(self, n: int) -> int:
        # MKL / OpenBLAS / OpenMP threads of the CPU kernels (paddle.base.core.set_num_threads); paddle also
        # reads OMP_NUM_THREADS at import, which is how the bench and estimate workers are started
        paddle.base.core.set_num_threads(int(n))
        self._threads = int(n)
        return self.threads()

    def no_grad(self) -> AbstractContextManager:
        return paddle.no_grad()

    def backward(self, outputs: list[Any], grad_outputs: list[np.ndarray]) -> None:
        # one scalar loss: paddle.autograd.backward over several outputs of one op (LSTM's out, h, c)
        # fails with "Unable to find next node in the GradTensorHolder"
        loss = None
        for o, g in zip(outputs, grad_outputs):
            term = (o * paddle.to_tensor(np.array(g, dtype=g.dtype, ndmin=0))).sum()
            loss = term if loss is None else loss + term
        loss.backward()

    def input_grad(self, tensor: Any) -> np.ndarray | None:
        return None if tensor.grad is None else tensor.grad.numpy().copy()

    def seed(self, seed: int) -> None:
        paddle.seed(seed)

    def dtype_name(self, tensor: Any) -> str:
        return str(tensor.dtype).replace("paddle.", "")


backend = PaddleBackend()
