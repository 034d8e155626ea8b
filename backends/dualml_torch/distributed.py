"""Data parallel for torch: torchrun launches, DDP averages gradients (gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class TorchDistributed:
    def launch_command(self, nproc: int, script: str, args: list[str], log_dir: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                script, *args]

    def distributed_init(self) -> tuple[int, int]:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()

    def wrap_data_parallel(self, module: Any) -> Any:
        return torch.nn.parallel.DistributedDataParallel(module)

    def all_reduce_mean(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / dist.get_world_size()).tolist()

    def broadcast_array(self, value: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.array(value, order="C"))
        dist.broadcast(t, src=0)
        return t.numpy()
