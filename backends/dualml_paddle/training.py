"""Training operations for paddle: paddle.optimizer classes configured to torch's semantics,
auto_cast, clipping with the neutral formula, canonical optimizer state via accumulator names."""
from __future__ import annotations

import contextlib
import math
import warnings
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import paddle

from dualml.errors import DualmlWarning

_ACCUMULATORS = {"momentum_buffer": "velocity", "exp_avg": "moment1", "exp_avg_sq": "moment2"}


class PaddleTraining:
    def make_optimizer(self, module: Any, spec: Any, groups: list[Any], frozen: list[str]) -> Any:
        params = dict(module.named_parameters())
        for name in frozen:
            params[name].stop_gradient = True
        # a group's learning_rate is a multiplier of the optimizer's rate in paddle
        pgroups = [{"params": [params[n] for n in g.native_names], "learning_rate": g.lr_mult} for g in groups]
        wd = spec.weight_decay or None
        if spec.name == "sgd" and spec.momentum == 0:
            return paddle.optimizer.SGD(learning_rate=spec.lr, parameters=pgroups, weight_decay=wd)
        if spec.name == "sgd":
            return paddle.optimizer.Momentum(learning_rate=spec.lr, momentum=spec.momentum, parameters=pgroups,
                                             use_nesterov=spec.nesterov, weight_decay=wd)
        b1, b2 = spec.betas
        if spec.name == "adam":
            return paddle.optimizer.Adam(learning_rate=spec.lr, beta1=b1, beta2=b2, epsilon=spec.eps,
                                         parameters=pgroups, weight_decay=wd)
        return paddle.optimizer.AdamW(learning_rate=spec.lr, beta1=b1, beta2=b2, epsilon=spec.eps,
                                      parameters=pgroups, weight_decay=spec.weight_decay)

    def set_trainable(self, module: Any, names: list[str], trainable: bool) -> None:
        params = dict(module.named_parameters())
        for name in names:
            params[name].stop_gradient = not trainable

    def set_lr(self, opt: Any, base_lr: float, groups: list[Any]) -> None:
        opt.set_lr(base_lr)

    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        # reduced in float32 at least (as on torch; float64 stays float64); astype is a real cast op
        # in paddle even to the same dtype, so it is skipped unless the logits are float16/bfloat16
        if logits.dtype in (paddle.float16, paddle.bfloat16):
            logits = logits.astype("float32")
        return paddle.nn.functional.cross_entropy(logits, labels)

    def autocast(self, amp: str | None) -> AbstractContextManager:
        """``paddle.amp.auto_cast`` O1 where paddle runs it (GPU); float32 on CPU, with one warning.

        Measured with paddle 2.6.2 on CPU (tests/test_amp.py keeps these facts checked):
        - ``auto_cast(dtype='bfloat16', level='O1' or 'O2')`` warns "amp_guard can only be enabled on
          CUDAPlace, XPUPlace, and CustomPlace ... so it makes no effect" and runs everything in float32
          (Linear, Conv2D, matmul, BatchNorm outputs all float32); ``paddle.amp.decorate`` returns the
          model and optimizer unchanged off-GPU, so O2 does nothing either.
        - Forcing it (setting the tracer's AMP level/dtype by hand) still leaves float32: the eager
          auto-cast only casts tensors on GPU/XPU/custom places.
        - Casting the model to bfloat16 by hand fails at the first op: the CPU kernels of matmul,
          conv2d, relu, batch_norm, pool2d, add and cross_entropy are registered for float32/float64
          only. Paddle's bf16 CPU kernels are oneDNN ones, reachable in dygraph only through
          ``_legacy_C_ops`` with ``use_mkldnn=True``: matmul_v2 works there, but its backward
          segfaults when one input needs no gradient, a bf16 mlp step was 2.3x slower than float32,
          and conv2d fails outright ("OneDnnContext does not have the input Filter").
        So ``amp=bf16`` on a paddle CPU run trains in float32, which we say once rather than let
        paddle's misleading per-context warning stand for it. The loss curve is then exactly the
        float32 one, within the bf16 tolerance of a torch run of the same config (tests/test_amp.py).
        """
        if amp is None:
            return contextlib.nullcontext()
        dtype = "bfloat16" if amp == "bf16" else "float16"
        if paddle.device.get_device().startswith("gpu"):
            return paddle.amp.auto_cast(dtype=dtype, level="O1")
        if not getattr(self, "_cpu_amp_warned", False):
            self._cpu_amp_warned = True
            warnings.warn(f"trainer.amp={amp}: paddle {paddle.__version__} has no {dtype} kernels for matmul/conv2d "
                          "on CPU in dynamic-graph mode (paddle.amp.auto_cast is a no-op off-GPU), so this paddle "
                          f"run trains in float32; torch runs the same config in {amp}", DualmlWarning, stacklevel=2)
        return contextlib.nullcontext()

    def backward_scaled(self, loss: Any, scale: float) -> None:
        (loss * scale).backward() if scale != 1.0 else loss.backward()

    def clip_grads(self, module: Any, max_norm: float | None) -> float:
        grads = [p.grad for p in module.parameters() if p.grad is not None and not p.stop_gradient]
        if not grads:
            return 0.0
        # one fused kernel per gradient (the one paddle.nn.ClipGradByGlobalNorm uses) instead of astype (a real
        # cast even float32 -> float32) + scalar ** (builds a full tensor) + sum; .item() + math.sqrt instead of
        # float(paddle.sqrt(..)), which goes through numpy: ~0.7 ms -> ~0.12 ms per step on mlp (bench_trainer)
        sq = [paddle._C_ops.squared_l2_norm(g.astype("float32") if g.dtype in (paddle.float16, paddle.bfloat16) else g)
              for g in grads]
        norm = math.sqrt(paddle.add_n(sq).item())
        if max_norm is not None:
            coef = min(1.0, max_norm / (norm + 1e-6))
            if coef < 1.0:
                for g in grads:  # grads are leaves paddle refuses to scale in place; set_value copies
                    g.set_value(g * coef)
        return norm

    def unscale_grads(self, module: Any, factor: float) -> bool:
        grads = [p.grad for p in module.parameters() if p.grad is not None and not p.stop_gradient]
        for g in grads:  # grads are leaves paddle refuses to scale in place; set_value copies
            g.set_value(g * factor)
        return all(bool(paddle.isfinite(g).all()) for g in grads)

    def zero_grads(self, opt: Any) -> None:
        opt.clear_grad(set_to_zero=False)

    def optimizer_step(self, opt: Any) -> None:
        opt.step()
        opt.clear_grad(set_to_zero=False)

    def item(self, tensor: Any) -> float:
        return float(tensor.item())

    def optimizer_slots(self, opt: Any, module: Any, spec: Any) -> dict[str, dict[str, np.ndarray]]:
        state = opt.state_dict()
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in spec.slots}
        for name, p in module.named_parameters():
            for slot in spec.slots:
                key = f"{p.name}_{_ACCUMULATORS[slot]}_0"
                if key in state:
                    out[slot][name] = state[key].numpy().copy()
        return out

    def load_optimizer_slots(self, opt: Any, module: Any, spec: Any, slots: dict[str, dict[str, np.ndarray]],
                             step: int, extras: dict[str, np.ndarray] | None = None,
                             param_steps: dict[str, int] | None = None) -> None:
        state = {}
        for name, p in module.named_parameters():
            have = False
            for slot in spec.slots:
                if name in slots.get(slot, {}):
                    state[f"{p.name}_{_ACCUMULATORS[slot]}_0"] = paddle.to_tensor(slots[slot][name])
                    have = True
            if have and spec.name != "sgd":  # paddle keeps beta^(t+1) after t updates
                for i, beta in enumerate(spec.betas, start=1):
                    exact = (extras or {}).get(f"{name}.beta{i}_pow_acc")
                    dtype = next(iter(slots[s][name] for s in spec.slots if name in slots.get(s, {}))).dtype
                    taken = (param_steps or {}).get(name, step)
                    value = exact if exact is not None else np.array([beta ** (taken + 1)], dtype)
                    state[f"{p.name}_beta{i}_pow_acc_0"] = paddle.to_tensor(value)
        if state:  # one call: set_state_dict replaces what an earlier call left pending
            opt.set_state_dict(state)

    def optimizer_extras(self, opt: Any, module: Any) -> dict[str, np.ndarray]:
        state = opt.state_dict()
        out = {}
        for name, p in module.named_parameters():
            for i in (1, 2):
                key = f"{p.name}_beta{i}_pow_acc_0"
                if key in state:
                    out[f"{name}.beta{i}_pow_acc"] = state[key].numpy().copy()
        return out

