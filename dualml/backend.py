"""What an adapter provides, the layer-implementation registry, and canonical <-> native rules.

An adapter (``dualml_torch``, ``dualml_paddle``, or a third one) is one package exposing
``backend``, an instance of :class:`Backend`, plus ``register_layer`` calls for every layer it
supports. The core looks adapters up by name and imports them lazily, so ``import dualml`` never
imports a framework. Weight layout differences are declared as :class:`Rule` data, applied by one
neutral routine here, so the two adapters share no conversion code.
"""
from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

from .errors import BackendError, not_allowed
from .layers import Layer

#: built-in adapters; more can be added through the ``dualml.backends`` entry-point group
BUILTIN_BACKENDS = {"torch": "dualml_torch", "paddle": "dualml_paddle"}


def float32_held(value: float) -> float:
    """``value`` rounded to float32, as paddle holds every float attribute of its kernels (epsilons,
    momentum coefficients, slopes, optimizer betas). dualml gives torch the same rounded value, so
    in float64 the two backends compute the same function (unrounded, BatchNorm's running variance
    differed by 2e-8 and a LeakyReLU output by 9e-9); in float32 nothing changes."""
    return float(np.float32(value))


@dataclass(frozen=True)
class Rule:
    """How canonical weights map to one native array.

    ``same``: copied as is; ``T``: a 2-d transpose (paddle Linear stores [in, out]);
    ``stack0``: several canonical arrays concatenated along axis 0 (torch's packed
    ``in_proj_weight`` = q, k, v); ``flat``: stored flattened natively (paddle's LayerNorm over
    several trailing dims), canonical ``shape`` given.
    """

    canonical: tuple[str, ...]
    native: str
    transform: str = "same"
    shape: tuple[int, ...] | None = None  # canonical shape, for ``flat``


def same(*names: str) -> list[Rule]:
    return [Rule((n,), n) for n in names]


def prefixed(prefix: str, rules: Iterable[Rule]) -> list[Rule]:
    """Rules of a sub-layer nested under ``prefix`` (e.g. ``self_attn``) on both sides."""
    return [Rule(tuple(f"{prefix}.{c}" for c in r.canonical), f"{prefix}.{r.native}", r.transform)
            for r in rules]


def rename(mapping: dict[str, str]) -> list[Rule]:
    return [Rule((c,), n) for c, n in mapping.items()]


def to_canonical(rules: Sequence[Rule], native: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for r in rules:
        if r.native not in native:
            continue
        a = native[r.native]
        if r.transform == "same":
            out[r.canonical[0]] = a
        elif r.transform == "T":
            out[r.canonical[0]] = np.ascontiguousarray(a.T)
        elif r.transform == "flat":
            out[r.canonical[0]] = a.reshape(r.shape)
        elif r.transform == "stack0":
            for name, part in zip(r.canonical, np.split(a, len(r.canonical), axis=0)):
                out[name] = np.ascontiguousarray(part)
        else:  # pragma: no cover - adapter bug
            raise BackendError(f"unknown weight transform {r.transform!r}")
    return out


def from_canonical(rules: Sequence[Rule], canonical: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for r in rules:
        if not all(c in canonical for c in r.canonical):
            continue
        if r.transform == "same":
            out[r.native] = canonical[r.canonical[0]]
        elif r.transform == "T":
            out[r.native] = np.ascontiguousarray(canonical[r.canonical[0]].T)
        elif r.transform == "flat":
            out[r.native] = canonical[r.canonical[0]].reshape(-1)
        elif r.transform == "stack0":
            out[r.native] = np.concatenate([canonical[c] for c in r.canonical], axis=0)
    return out


@dataclass(frozen=True)
class LayerImpl:
    """How one backend builds a neutral layer type and lays out its weights."""

    build: Callable[[Any], Any]
    rules: Callable[[Any], list[Rule]] | None = None

    def rules_for(self, spec: Layer) -> list[Rule]:
        return self.rules(spec) if self.rules else same(*spec.params())


_IMPLS: dict[tuple[str, type], LayerImpl] = {}


def register_layer(layer: type[Layer], backend: str, build: Callable[[Any], Any],
                   rules: Callable[[Any], list[Rule]] | None = None) -> None:
    """Register how ``backend`` builds ``layer``: ``build(spec) -> native layer`` and ``rules(spec)``
    (canonical <-> native weight names; default: the canonical names, unchanged)."""
    _IMPLS[(backend, layer)] = LayerImpl(build, rules)


def implements(layer: type[Layer], backend: str, rules: Callable[[Any], list[Rule]] | None = None):
    """Decorator form of :func:`register_layer` for adapter build functions."""
    def deco(fn):
        register_layer(layer, backend, fn, rules)
        return fn
    return deco


def layer_impl(backend: str, spec: Layer) -> LayerImpl:
    for klass in type(spec).__mro__:
        impl = _IMPLS.get((backend, klass))
        if impl is not None:
            return impl
    raise BackendError(f"layer {spec.kind} has no implementation for backend={backend}; register one "
                       f"with dualml.register_layer({spec.kind}, '{backend}', build=..., rules=...)")


def registered_layers() -> list[type[Layer]]:
    """Every layer type some backend implements (built-in and user-registered), in registration order."""
    seen: dict[type, None] = {}
    for (_, klass) in _IMPLS:
        seen.setdefault(klass, None)
    return list(seen)


@dataclass
class StepPlan:
    """What every optimizer step of one run works on, fixed when the Trainer is built
    (``dualml.train.trainer.Trainer``) and handed to :meth:`Backend.train_step` each step."""

    #: the model the forward runs through (the DDP / DataParallel wrapper when data parallel)
    net: Any
    #: the unwrapped model, whose gradients are unscaled and clipped
    module: Any
    opt: Any
    #: parameter groups (``dualml.train.optim``), for the per-group learning rate
    groups: list[Any]
    #: ``loss(logits, labels, x, y)`` replacing cross-entropy (distillation gets the numpy batch ``x``, a masked
    #: regression loss the numpy targets ``y``); None: CE
    loss: Callable[[Any, Any, np.ndarray, np.ndarray], Any] | None = None
    amp: str | None = None
    clip_norm: float | None = None
    world_size: int = 1


@dataclass
class StepResult:
    """One optimizer step as the Trainer logs it. ``loss``/``acc`` are means over the micro-batches (and
    ranks); a non-finite ``loss`` means the update was not applied (the Trainer stops there).
    ``finite=False``: fp16 gradients overflowed, the update was skipped. ``grad_norm`` is NaN unless
    clipping computed it."""

    loss: float
    acc: float
    grad_norm: float = float("nan")
    finite: bool = True


class Backend(ABC):
    """One framework's adapter: everything the neutral core asks of a framework, and nothing else.

    The core reaches a framework only through these members (the import-linter contract forbids
    anything else), so a third framework is one more subclass. Members with a default either work
    for any framework written in the usual eager style (:meth:`hooks`, :meth:`train_step`) or say in one
    line that the feature is missing on this backend (quantization, filter selection, export)."""

    name: str
    #: the framework's version, written into ONNX metadata and bench reports
    version: str
    #: export paths :meth:`export_onnx` accepts besides ``auto`` (``export.exporter``), e.g. torch's
    #: ``dynamo``/``torchscript``; empty: no ONNX export
    exporters: tuple[str, ...] = ()
    #: ``torch.nn.Module`` / ``paddle.nn.Layer``: the base of generated composite classes
    module_base: type
    #: the op namespace bound as ``self.F`` in every built model (see ``dualml.ops.OPS``)
    ops: Any

    @abstractmethod
    def container(self, kind: str, children: list[Any]) -> Any:
        """A native ``sequential`` or ``list`` container of already-built children."""

    @abstractmethod
    def add_weight(self, module: Any, name: str, value: np.ndarray, trainable: bool) -> None:
        """Attach a parameter (trainable) or persistent buffer to a native composite."""

    @abstractmethod
    def arrays(self, module: Any) -> dict[str, np.ndarray]:
        """All parameters and persistent buffers of a native module as numpy, by native name."""

    @abstractmethod
    def assign(self, module: Any, values: dict[str, np.ndarray]) -> None:
        """Copy numpy arrays into existing native parameters/buffers of the same shape, in place."""

    @abstractmethod
    def grads(self, module: Any) -> dict[str, np.ndarray]:
        """Gradients of the module's parameters by native name (zeros where none flowed)."""

    @abstractmethod
    def tensor(self, value: np.ndarray, requires_grad: bool = False, copy: bool = True) -> Any:
        """A native tensor of ``value``. ``copy=False`` lets it share the array's memory where the
        framework can (torch), for arrays the caller will not touch again (the Loader's fresh batches):
        a copy per step is measurable on a ~1 ms step."""

    @abstractmethod
    def numpy(self, tensor: Any) -> np.ndarray: ...

    @abstractmethod
    def memory_order(self, tensor: Any) -> str:
        """'contiguous' for dense row-major (NCHW for images), else a description of the strides."""

    @abstractmethod
    def set_train(self, module: Any, mode: bool) -> None: ...

    @abstractmethod
    def to_dtype(self, module: Any, dtype: str) -> None:
        """Cast floating parameters and buffers in place (e.g. 'float64' for exact-math checks)."""

    @abstractmethod
    def add_hook(self, layer: Any, when: str, fn: Callable[..., Any]) -> Any:
        """Register ``fn(layer, inputs)`` (``when='pre'``) or ``fn(layer, inputs, output)`` (``'post'``; a
        returned value replaces the output) as a forward hook of a native layer; returns the framework's
        handle, which has ``remove()``. The one framework-specific piece of :meth:`hooks`."""

    @contextmanager
    def hooks(self, leaves: dict[str, Any], pre: Callable[[str, tuple], None] | None = None,
              post: Callable[[str, Any], Any] | None = None) -> Iterator[None]:
        """Forward pre/post hooks on ``leaves`` (path -> native layer), called as ``pre(path, inputs)`` and
        ``post(path, output)``, removed on exit. Written once here: tracing (FLOPs, pruning, BN folding),
        first-divergence search and error localisation all see the same calls on every backend."""
        handles = []
        for path, layer in leaves.items():
            if pre:
                handles.append(self.add_hook(layer, "pre", lambda m, inp, p=path: pre(p, inp)))
            if post:
                handles.append(self.add_hook(layer, "post", lambda m, inp, out, p=path: post(p, out)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @abstractmethod
    def no_grad(self) -> AbstractContextManager: ...

    @abstractmethod
    def backward(self, outputs: list[Any], grad_outputs: list[np.ndarray]) -> None:
        """Back-propagate sum(output * grad_output) so parameter and input grads are populated."""

    @abstractmethod
    def input_grad(self, tensor: Any) -> np.ndarray | None: ...

    @abstractmethod
    def seed(self, seed: int) -> None: ...

    #: model dtypes the adapter can build in (``build(dtype=)``); float64 is the parity authority
    dtypes: tuple[str, ...] = ("float32", "float64")
    #: layer types whose kernels keep a constant in float32 even when the model runs in float64
    #: (type -> what and its size), named in float64 parity reports instead of hidden in a tolerance
    float32_constants: dict[type, str] = {}

    #: attributes of native layers that are bookkeeping, not hyper-parameters (never compared)
    hparam_ignore: frozenset[str] = frozenset({"training"})

    def hparams(self, layer: Any) -> dict[str, Any]:
        """A native layer's own simple-valued attributes (eps, momentum, stride, ...), to check that
        a hand-written layer was configured like the dualml spec, in the framework's own terms."""
        simple = (int, float, bool, str, type(None))
        out = {}
        for k, v in vars(layer).items():
            if k in self.hparam_ignore or k.startswith("__"):
                continue
            if isinstance(v, simple) or (isinstance(v, (list, tuple)) and all(isinstance(x, simple) for x in v)):
                out[k] = tuple(v) if isinstance(v, list) else v
        return out

    # ------------------------------------------------------------------ training (see dualml.train.trainer)
    @abstractmethod
    def make_optimizer(self, module: Any, spec: Any, groups: list[Any], frozen: list[str]) -> Any:
        """The framework's own optimizer for ``spec`` (dualml.train.optim.OptimSpec) over ``groups``;
        ``frozen`` parameters get no gradient and no optimizer slot."""

    def set_trainable(self, module: Any, names: list[str], trainable: bool) -> None:
        """Let the native parameters ``names`` get gradients (or not) from the next step on, without
        touching the optimizer (``trainer.unfreeze``): an optimizer skips a parameter that has no gradient,
        so it keeps no slot and makes no update for it while it is frozen. The default refuses in one line,
        so an adapter without it still does everything else."""
        raise BackendError(f"backend={self.name} cannot change which parameters train during a run "
                           "(Backend.set_trainable); trainer.unfreeze is not allowed here")

    @abstractmethod
    def set_lr(self, opt: Any, base_lr: float, groups: list[Any]) -> None:
        """Apply this step's scheduled base rate (group multipliers included)."""

    @abstractmethod
    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        """Mean softmax cross-entropy over the batch (int64 labels)."""

    @abstractmethod
    def autocast(self, amp: str | None) -> AbstractContextManager:
        """Mixed precision context: None, 'bf16' (CPU/GPU) or 'fp16' (CUDA)."""

    @abstractmethod
    def backward_scaled(self, loss: Any, scale: float) -> None: ...

    @abstractmethod
    def clip_grads(self, module: Any, max_norm: float | None) -> float:
        """Global L2 norm of all gradients; if ``max_norm``, scale them by min(1, max_norm/(norm+1e-6))
        (one formula on both backends; paddle's own clipper has no epsilon)."""

    def unscale_grads(self, module: Any, factor: float) -> bool:
        """Multiply every gradient by ``factor`` (1/loss scale); True when all of them are finite."""
        raise BackendError(f"backend={self.name} does not implement fp16 loss scaling")

    def zero_grads(self, opt: Any) -> None:
        """Drop the gradients without an update (a loss-scaling step that overflowed)."""
        raise BackendError(f"backend={self.name} does not implement fp16 loss scaling")

    @abstractmethod
    def optimizer_step(self, opt: Any) -> None:
        """Apply the update and clear the gradients."""

    @abstractmethod
    def item(self, tensor: Any) -> float: ...

    def train_step(self, plan: StepPlan, batches: list[tuple[np.ndarray, np.ndarray]], lr: float,
                   seed: int | None, scale: float | None) -> StepResult:
        """One optimizer step over ``batches`` (the micro-batches of gradient accumulation) at rate ``lr``.

        ``seed``: re-seed the framework's RNG first (None: something else keeps it; the Trainer passes
        one only when a layer draws random numbers). ``scale``: the fp16 loss scale (None: no scaling).

        This default is the tape-based step every eager framework with ``loss.backward()`` shares:
        forward and loss per micro-batch (under :meth:`autocast`), backward of the scaled loss, then
        unscale and check (fp16), clip, update. An adapter whose framework differentiates functions
        instead (``value_and_grad``) overrides this one method; the Trainer around it (schedule,
        logging, checkpoints, divergence) stays the same. The update is not applied when the loss is
        not finite, so the last good state is what the Trainer keeps."""
        self.set_lr(plan.opt, lr, plan.groups)
        if seed is not None:
            self.seed(seed)
        loss_sum, correct, seen = 0.0, 0, 0
        weight = (scale if scale is not None else 1.0) / len(batches)
        for x, y in batches:
            if plan.amp is None:  # entering even a null context costs ~1% of an mlp step
                logits, loss = self._forward_loss(plan, x, y)
            else:
                with self.autocast(plan.amp):
                    logits, loss = self._forward_loss(plan, x, y)
            self.backward_scaled(loss, weight)
            loss_sum += self.item(loss) / len(batches)
            if y.ndim == 1:  # class labels; regression targets have no accuracy (NaN)
                correct += int(np.count_nonzero(self.numpy(logits).argmax(1) == y))
                seen += len(y)
        acc = correct / max(seen, 1) if seen or not batches else float("nan")
        if plan.world_size > 1:  # each rank saw an equal shard: the global batch's mean is the mean
            loss_sum, acc = self.all_reduce_mean([loss_sum, acc])
        result = StepResult(loss_sum, acc)
        if not math.isfinite(loss_sum):
            return result
        if scale is not None:
            finite = self.unscale_grads(plan.module, 1.0 / scale)
            if plan.world_size > 1:  # every rank must skip together or their weights part ways
                finite = self.all_reduce_mean([float(finite)])[0] == 1.0
            if not finite:  # overflow: no update this step
                self.zero_grads(plan.opt)
                result.finite = False
                return result
        # the global norm costs a reduction per tensor: computed (and logged) only when clipping
        if plan.clip_norm is not None:
            result.grad_norm = self.clip_grads(plan.module, plan.clip_norm)
        self.optimizer_step(plan.opt)
        return result

    def _forward_loss(self, plan: StepPlan, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        # the Loader's batches are fresh arrays nobody writes to: no copy needed (torch shares them)
        logits = plan.net(self.tensor(x, copy=False))
        labels = self.tensor(y, copy=False)
        return logits, (plan.loss(logits, labels, x, y) if plan.loss is not None
                        else self.cross_entropy(logits, labels))

    @abstractmethod
    def optimizer_slots(self, opt: Any, module: Any, spec: Any) -> dict[str, dict[str, np.ndarray]]:
        """{slot: {native parameter name: array}} for the neutral slots of ``spec``."""

    @abstractmethod
    def load_optimizer_slots(self, opt: Any, module: Any, spec: Any, slots: dict[str, dict[str, np.ndarray]],
                             step: int, extras: dict[str, np.ndarray] | None = None,
                             param_steps: dict[str, int] | None = None) -> None:
        """Install slot arrays, the step count and (same backend only) :meth:`optimizer_extras`, so
        the next update continues the run exactly. ``param_steps``: native parameter -> its own update
        count where it differs from ``step`` (a parameter unfrozen mid-run started its moments then)."""

    # ------------------------------------------------------------------ devices (dualml.devices parses and chooses)
    #: the adapter's current device (``dualml.devices.Device``): where :meth:`tensor` puts new tensors and
    #: :meth:`to_device` moves models; set by the Trainer from ``trainer.device``. Default: CPU.
    device: Any = None

    def device_count(self) -> int:
        """CUDA GPUs this framework can use here (0: CPU only). The default is 0, so an adapter that
        knows nothing of GPUs resolves ``trainer.device=auto`` to cpu and refuses ``cuda`` in one line."""
        return 0

    def local_rank(self) -> int:
        """This worker's number on its node, as the framework's launcher sets it (0 alone)."""
        return 0

    def set_device(self, device: Any) -> None:
        """Make ``device`` (a ``dualml.devices.Device``) current: new tensors and models go there.
        The default accepts only the CPU."""
        if device is not None and getattr(device, "kind", "cpu") != "cpu":
            raise BackendError(f"backend={self.name} runs on cpu only; allowed: trainer.device=cpu or auto")
        self.device = device

    def to_device(self, module: Any) -> Any:
        """Move a built model's parameters and buffers to the current device (in place; returns it).
        Canonical weights stay numpy on the host, so checkpoints do not depend on the device."""
        return module

    def device_peak_bytes(self) -> int | None:
        """Peak bytes the framework allocated on the current GPU since start (None on CPU / unknown),
        reported by ``dualml estimate`` beside its formula."""
        return None

    # ------------------------------------------------------------------ data parallel
    @abstractmethod
    def launch_command(self, nproc: int, script: str, args: list[str], log_dir: str, nodes: Any = None,
                       device: Any = None) -> list[str]:
        """The framework's own multi-process launcher running ``script args`` on ``nproc`` workers per node.
        ``nodes`` (``dualml.devices.Nodes``, None: one node) names the rendezvous of several machines;
        ``device`` (``dualml.devices.Device``) says whether workers take GPUs (nccl) or not (gloo)."""

    @abstractmethod
    def distributed_init(self) -> tuple[int, int]:
        """(rank, world size) after joining the process group the launcher set up; (0, 1) alone."""

    @abstractmethod
    def wrap_data_parallel(self, module: Any) -> Any:
        """DDP / paddle.DataParallel around the built model (gradients averaged over ranks)."""

    @abstractmethod
    def all_reduce_mean(self, values: list[float]) -> list[float]: ...

    @abstractmethod
    def broadcast_array(self, value: np.ndarray) -> np.ndarray:
        """Rank 0's array on every rank."""

    def optimizer_extras(self, opt: Any, module: Any) -> dict[str, np.ndarray]:
        """Backend-only optimizer state that canonical slots derive approximately (paddle's float32
        beta-power accumulators); restored only on the same backend so a resume is bit-exact."""
        return {}

    def export_onnx(self, net: Any, sample: np.ndarray, path: str, opset: int | None, exporter: str) -> dict[str, Any]:
        """Write ``net`` (eval mode) as ONNX to ``path`` with input ``input`` whose dim 0 is dynamic.

        Returns {"exporter", "exporter_version", "fallback_reason"}; raises ExportError naming the
        exporter and what to try. Names, metadata and checks are added neutrally by dualml.onnx.export.
        """
        raise BackendError(f"backend={self.name} has no ONNX exporter")

    # ------------------------------------------------------------------ threads, filter selection
    @abstractmethod
    def threads(self) -> int:
        """Intra-op threads this process's framework computes with (recorded beside every timing)."""

    @abstractmethod
    def set_threads(self, n: int) -> int:
        """Compute with ``n`` intra-op threads from now on; returns :meth:`threads`. The bench and estimate
        workers call it so engines compare at the same thread count, not thread pools."""

    def select_filters(self, net: Any, ratios: dict[str, float], method: str, inputs: Any) -> dict[str, Any]:
        """The framework's own choice of conv filters to prune: {conv path: ``dualml.compress.prune.Selection``}
        for ``ratios`` {conv path: ratio} by ``method`` (l1 | l2 | fpgm) on the built ``net``; ``inputs`` is
        the traced input spec. Only the choice: dualml's neutral code removes the channels."""
        raise BackendError(f"backend={self.name} has no filter-selection tool; allowed: prune selection=numpy "
                           "(dualml's own l1 | l2 | fpgm on canonical weights)")

    def filter_selection_support(self) -> str | None:
        """None when :meth:`select_filters` works in this install, else why not (checked before a
        compression pipeline spends any training time; e.g. a framework line without its pruning tool)."""
        return None if type(self).select_filters is not Backend.select_filters else (
            f"backend={self.name} has no filter-selection tool")

    # ------------------------------------------------------------------ quantization (dualml.compress.quantization)
    def quantize_dynamic(self, net: Any) -> Any:
        """INT8 Linear weights without data (torch: activations quantized per batch; paddle: weight-only).
        Returns a new native quantized model; ``net`` is unchanged."""
        raise BackendError(f"backend={self.name} has no dynamic quantization")

    def quantize_static(self, net: Any, calibration: list[np.ndarray]) -> Any:
        """Post-training INT8 of weights and activations, activation ranges from the ``calibration``
        batches (float32, shaped like the input). Returns a new native quantized model."""
        raise BackendError(f"backend={self.name} has no static post-training quantization")

    def prepare_qat(self, net: Any) -> Any:
        """A fake-quantized copy of ``net`` that the framework's optimizers can train (QAT)."""
        raise BackendError(f"backend={self.name} has no quantization-aware training")

    def convert_qat(self, qat_net: Any) -> Any:
        """The quantized model of a trained :meth:`prepare_qat` model."""
        raise BackendError(f"backend={self.name} has no quantization-aware training")

    def export_quantized_onnx(self, qnet: Any, sample: np.ndarray, path: str,
                              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a quantized model as QDQ ONNX (one input ``input``, one output ``output``, dynamic
        batch, finalized by dualml.onnx.export.finalize) and return the exporter and graph facts."""
        raise BackendError(f"backend={self.name} cannot export quantized models to ONNX")

    def quantization_support(self, mode: str) -> str | None:
        """None when quantization ``mode`` (dynamic | static | qat) works on this backend, else why not
        (checked before a compression pipeline spends any training time)."""
        return None

    def parameter_names(self, module: Any) -> list[str]:
        """Full names of the module's parameters (named_parameters order, shared ones once)."""
        return [n for n, _ in module.named_parameters()]

    @abstractmethod
    def sublayers(self, layer: Any) -> list[tuple[str, Any]]:
        """(dotted name, module) for the layer itself ('') and every module inside it."""

    def is_tensor(self, value: Any) -> bool:
        return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, np.ndarray)

    def dtype_name(self, tensor: Any) -> str:
        """A framework-independent dtype name: float32, int64, bool, ..."""
        return str(tensor.dtype).replace("torch.", "").replace("paddle.", "")


_LOADED: dict[str, Backend] = {}


def available_backends() -> dict[str, str]:
    """Backend name -> adapter module (built-in plus ``dualml.backends`` entry points)."""
    names = dict(BUILTIN_BACKENDS)
    try:
        for ep in metadata.entry_points(group="dualml.backends"):
            names.setdefault(ep.name, ep.value)
    except Exception:  # pragma: no cover - broken metadata must not break the core
        pass
    return names


def get_backend(name: str) -> Backend:
    """The adapter for ``name``, imported on first use (this is where a framework gets imported)."""
    if isinstance(name, Backend):
        return name
    if name in _LOADED:
        return _LOADED[name]
    names = available_backends()
    if name == "auto":
        raise BackendError("backend=auto is resolved by dualml.config.load_config (through the latest "
                           "`dualml decide`), not by get_backend; pass the resolved backend=torch or backend=paddle")
    if name not in names:
        raise BackendError(not_allowed("backend", name, names))
    try:
        module = importlib.import_module(names[name])
    except ImportError as exc:
        raise BackendError(f"backend={name} needs its framework installed: {exc}; install with "
                           f"`pip install dualml[{name}]`") from exc
    _LOADED[name] = module.backend
    return module.backend


def default_backend() -> str:
    """The backend neutral passes trace on when the caller names none (FLOPs, BN folding, pruning's
    dependency trace): the first of :func:`available_backends` whose framework imports, so torch where it
    is installed (as before) and paddle on a paddle-only install. A pass given a configured backend
    uses that one instead; this is only the fallback for library calls without one."""
    reasons = []
    for name in available_backends():
        try:
            return get_backend(name).name
        except BackendError as exc:
            reasons.append(str(exc))
    raise BackendError("no backend can be imported: " + "; ".join(reasons))
