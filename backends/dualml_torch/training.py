"""Training operations for torch: torch.optim optimizers, autocast, clipping, canonical optimizer state."""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch

_LOW = (torch.float16, torch.bfloat16)
_TORCH_SLOTS = {"momentum_buffer": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


def _make_optimizer(module: Any, spec: Any, groups: list[Any], frozen: list[str]) -> Any:
    params = dict(module.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    torch_groups = [{"params": [params[n] for n in g.native_names], "lr": spec.lr * g.lr_mult} for g in groups]
    if spec.name == "sgd":
        return torch.optim.SGD(torch_groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(torch_groups, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


class TorchTraining:
    def make_optimizer(self, module: Any, spec: Any, groups: list[Any], frozen: list[str]) -> Any:
        return _make_optimizer(module, spec, groups, frozen)

    def set_trainable(self, module: Any, names: list[str], trainable: bool) -> None:
        params = dict(module.named_parameters())
        for name in names:
            params[name].requires_grad_(trainable)

    def set_lr(self, opt: Any, base_lr: float, groups: list[Any]) -> None:
        for pg, g in zip(opt.param_groups, groups, strict=True):
            pg["lr"] = base_lr * g.lr_mult

    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        # the loss is reduced in float32 at least: under autocast the logits are bf16/fp16, and a
        # low-precision log-sum-exp would round the loss (and its gradient) before it is even logged;
        # float64 logits (trainer.dtype=float64) stay float64
        if logits.dtype in _LOW:  # .float() on float32 is a no-op but still a dispatcher round trip
            logits = logits.float()
        return torch.nn.functional.cross_entropy(logits, labels)

    def autocast(self, amp: str | None) -> AbstractContextManager:
        """torch's own autocast. Measured on CPU (torch 2.13, bf16): Linear, Conv2d and matmul outputs
        are bfloat16 (they run bf16 kernels, oneDNN/AMX where the CPU has them); BatchNorm, ReLU and
        pooling then run on those bf16 tensors; cross_entropy is on autocast's float32 list.

        ``amp=None`` returns a null context, not ``torch.autocast(enabled=False)``: entering and
        leaving a disabled autocast costs 8 us idle and up to ~45 us on a busy CPU, per micro-batch,
        for nothing (an mlp step on digits is ~1 ms; see benchmarks/bench_trainer.py)."""
        if amp is None:
            return contextlib.nullcontext()
        # on the device the tensors are on (trainer.device), not wherever CUDA happens to exist
        device = "cuda" if getattr(self, "_tdev", None) is not None else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def backward_scaled(self, loss: Any, scale: float) -> None:
        (loss * scale).backward() if scale != 1.0 else loss.backward()

    def clip_grads(self, module: Any, max_norm: float | None) -> float:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float() if g.dtype in _LOW else g)
                                                     for g in grads]))
        if max_norm is not None:
            coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            for g in grads:
                g.mul_(coef)
        return float(norm)

    def unscale_grads(self, module: Any, factor: float) -> bool:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return True
        torch._foreach_mul_(grads, factor)
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())

    def zero_grads(self, opt: Any) -> None:
        opt.zero_grad(set_to_none=True)

    def optimizer_step(self, opt: Any) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    def item(self, tensor: Any) -> float:
        return tensor.item()

    def optimizer_slots(self, opt: Any, module: Any, spec: Any) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in spec.slots}
        for name, p in module.named_parameters():
            state = opt.state.get(p, {})
            for slot in spec.slots:
                if state.get(_TORCH_SLOTS[slot]) is not None:
                    out[slot][name] = self.numpy(state[_TORCH_SLOTS[slot]]).copy()
        return out

    def load_optimizer_slots(self, opt: Any, module: Any, spec: Any, slots: dict[str, dict[str, np.ndarray]],
                             step: int, extras: dict[str, np.ndarray] | None = None,
                             param_steps: dict[str, int] | None = None) -> None:
        for name, p in module.named_parameters():
            state = {}
            for slot in spec.slots:
                if name in slots.get(slot, {}):
                    state[_TORCH_SLOTS[slot]] = torch.from_numpy(np.array(slots[slot][name], order="C")).to(p.device)
            if state:
                if spec.name != "sgd":
                    state["step"] = torch.tensor(float((param_steps or {}).get(name, step)))
                opt.state[p] = state

