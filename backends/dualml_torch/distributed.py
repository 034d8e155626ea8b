"""Data parallel for torch: torchrun launches (one node or a static rendezvous of several), DDP averages
gradients (gloo on CPU, nccl with one GPU per rank)."""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class TorchDistributed:
    def launch_command(self, nproc: int, script: str, args: list[str], log_dir: str, nodes: Any = None,
                       device: Any = None) -> list[str]:
        if nodes is None or not nodes.multi:
            where = ["--standalone"]
        else:  # static rendezvous: node 0 hosts the TCP store at master_addr:master_port; bounded wait
            where = [f"--nnodes={nodes.nnodes}", f"--node_rank={nodes.node_rank}",
                     f"--master_addr={nodes.master_addr}", f"--master_port={nodes.master_port}",
                     "--rdzv_conf", f"timeout={max(1, int(nodes.rendezvous_timeout_s))}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", script, *args]

    def distributed_init(self) -> tuple[int, int]:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        if not dist.is_initialized():
            on_gpu = getattr(self, "_tdev", None) is not None
            dist.init_process_group("nccl" if on_gpu else "gloo",
                                    device_id=self._tdev if on_gpu else None)
        return dist.get_rank(), dist.get_world_size()

    def wrap_data_parallel(self, module: Any) -> Any:
        dev = getattr(self, "_tdev", None)
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=None if dev is None else [dev])

    def _comm(self, t: Any) -> Any:  # nccl reduces device tensors only
        dev = getattr(self, "_tdev", None)
        return t if dev is None else t.to(dev)

    def all_reduce_mean(self, values: list[float]) -> list[float]:
        t = self._comm(torch.tensor(values, dtype=torch.float64))
        dist.all_reduce(t)
        return (t / dist.get_world_size()).cpu().tolist()

    def broadcast_array(self, value: np.ndarray) -> np.ndarray:
        t = self._comm(torch.from_numpy(np.array(value, order="C")))
        dist.broadcast(t, src=0)
        return t.cpu().numpy()
