"""Where training runs: ``trainer.device`` and the multi-node keys, parsed and checked in one neutral place.

Why here and not in the adapters: the grammar (``auto | cpu | cuda | cuda:N``), the choice ``auto`` makes
and the one-line errors are the same for every framework; only "how many GPUs does this framework see"
and "put this model there" are framework calls, and those are ``Backend.device_count`` /
``Backend.set_device`` / ``Backend.to_device`` (with defaults that mean "CPU only", so an adapter that
knows nothing of GPUs still works). Paddle's ``gpu:N`` is the adapter's business: users write ``cuda:N``
on both backends.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: what ``trainer.device`` accepts besides ``cuda:N``
DEVICE_WORDS = ("auto", "cpu", "cuda")
_CUDA_N = re.compile(r"^cuda:(\d+)$")


@dataclass(frozen=True)
class Device:
    """A resolved device: ``kind`` 'cpu' or 'cuda', ``index`` the GPU number (None on CPU)."""

    kind: str = "cpu"
    index: int | None = None
    #: full float32 math on a GPU (no TF32 in matmul/convolution): what parity compares with the CPU
    #: tolerances; training leaves the framework's default (TF32 where the GPU has it)
    exact: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


CPU = Device()


def parse_device(value: Any, key: str = "trainer.device") -> tuple[str, int | None]:
    """The syntax only (no framework asked): ('auto'|'cpu'|'cuda', index or None); ConfigError otherwise."""
    text = str(value).strip().lower() if value is not None else ""
    if text in DEVICE_WORDS:
        return text, None
    m = _CUDA_N.match(text)
    if m:
        return "cuda", int(m.group(1))
    raise ConfigError(f"{key}={value} is not allowed; allowed: auto, cpu, cuda, cuda:N (N = a GPU number)")


def resolve_device(value: Any, gpus: int, local_rank: int = 0, local_ranks: int = 1, backend: str = "",
                   key: str = "trainer.device") -> tuple[Device, str]:
    """Choose the device for this process from ``value`` and the ``gpus`` the framework sees.

    ``local_rank`` / ``local_ranks``: this worker's number on its node and how many run there
    (``trainer.devices``); with ``cuda`` each rank takes GPU ``local_rank`` (one GPU per rank, as nccl
    wants). Returns the device and one line saying what was chosen and why (``auto`` says which).
    Raises ConfigError naming what this machine allows."""
    word, index = parse_device(value, key)
    who = f"backend={backend} " if backend else ""
    if word == "cpu":
        return CPU, f"{key}=cpu: training on cpu"
    if word == "auto":
        if gpus <= 0:
            return CPU, f"{key}=auto: {who}sees no CUDA GPU, training on cpu"
        if local_ranks > gpus:
            return CPU, (f"{key}=auto: {local_ranks} ranks per node but {who}sees {gpus} GPU(s), "
                         "training on cpu (gloo)")
        return Device("cuda", local_rank), (f"{key}=auto: {who}sees {gpus} CUDA GPU(s), training on "
                                            f"{_on(local_rank, local_ranks)}")
    allowed = "auto, cpu" + (", cuda, " + ", ".join(f"cuda:{i}" for i in range(gpus)) if gpus > 0 else "")
    if gpus <= 0:
        raise ConfigError(f"{key}={value} is not allowed; {who}sees no CUDA GPU on this machine; allowed: {allowed}")
    if index is None:
        if local_ranks > gpus:
            raise ConfigError(f"{key}={value} with trainer.devices={local_ranks} is not allowed; {who}sees {gpus} "
                              f"GPU(s) and each rank needs its own; allowed: trainer.devices <= {gpus}, or "
                              f"{key}=cpu")
        return Device("cuda", local_rank), f"{key}=cuda: training on {_on(local_rank, local_ranks)}"
    if index >= gpus:
        raise ConfigError(f"{key}={value} is not allowed; {who}sees {gpus} GPU(s) on this machine; allowed: {allowed}")
    if local_ranks > 1:
        raise ConfigError(f"{key}={value} with trainer.devices={local_ranks} is not allowed; a fixed GPU cannot serve "
                          f"several ranks; allowed: {key}=cuda (rank r takes cuda:r)")
    return Device("cuda", index), f"{key}={value}: training on {Device('cuda', index)}"


def _on(local_rank: int, local_ranks: int) -> str:
    return f"cuda:{local_rank}" if local_ranks == 1 else f"cuda:0..cuda:{local_ranks - 1} (rank r takes cuda:r)"


# ---------------------------------------------------------------------------------------------- several machines
@dataclass(frozen=True)
class Nodes:
    """The multi-node keys of ``trainer``: handed to torchrun's rendezvous and paddle.distributed.launch."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    rendezvous_timeout_s: float = 60.0

    @property
    def multi(self) -> bool:
        return self.nnodes > 1


def _int(key: str, v: Any, low: int, high: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"{low}..{high}"
        raise ConfigError(f"{key}={v!r} is not allowed; allowed: an integer {rng}")
    return int(v)


#: the longest rendezvous wait allowed (a wait is bounded so a missing master is an error, not a hang)
MAX_RENDEZVOUS_S = 3600.0


def parse_nodes(t: Any) -> Nodes:
    """``trainer.nnodes/node_rank/master_addr/master_port/rendezvous_timeout_s`` checked (ConfigError, one line)."""
    get = t.get if hasattr(t, "get") else (lambda k, d=None: getattr(t, k, d))
    nnodes = _int("trainer.nnodes", get("nnodes", 1), 1)
    node_rank = _int("trainer.node_rank", get("node_rank", 0), 0)
    if node_rank >= nnodes:
        raise ConfigError(f"trainer.node_rank={node_rank} is not allowed with trainer.nnodes={nnodes}; "
                          f"allowed: 0..{nnodes - 1}")
    port = _int("trainer.master_port", get("master_port", 29500), 1, 65535)
    addr = get("master_addr", "127.0.0.1")
    if not isinstance(addr, str) or not addr or any(c.isspace() for c in addr) or ":" in addr and not _is_ip(addr):
        raise ConfigError(f"trainer.master_addr={addr!r} is not allowed; allowed: a host name or IP address "
                          "(the port is trainer.master_port)")
    timeout = get("rendezvous_timeout_s", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_RENDEZVOUS_S:
        raise ConfigError(f"trainer.rendezvous_timeout_s={timeout!r} is not allowed; allowed: a number > 0 and <= "
                          f"{MAX_RENDEZVOUS_S:g} (seconds)")
    return Nodes(nnodes, node_rank, addr, port, float(timeout))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def check_master_resolves(nodes: Nodes) -> None:
    """A master name that does not resolve is a one-line error at once (no point waiting for it)."""
    try:
        socket.getaddrinfo(nodes.master_addr, nodes.master_port)
    except OSError as exc:
        raise ConfigError(f"trainer.master_addr={nodes.master_addr} is not allowed; it does not resolve "
                          f"({exc.strerror or exc})") from None
