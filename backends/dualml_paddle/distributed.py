"""Data parallel for paddle: paddle.distributed.launch starts workers, paddle.DataParallel averages
gradients (gloo on CPU when launched with --devices "", nccl on GPUs)."""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import paddle
import paddle.distributed as dist


class PaddleDistributed:
    def launch_command(self, nproc: int, script: str, args: list[str], log_dir: str, nodes: Any = None,
                       device: Any = None) -> list[str]:
        on_gpu = device is not None and device.is_cuda
        devices = ["--devices", ",".join(str(i) for i in range(nproc)) if on_gpu else ""]
        where = [] if nodes is None or not nodes.multi else [
            "--master", f"{nodes.master_addr}:{nodes.master_port}", "--nnodes", str(nodes.nnodes),
            "--rank", str(nodes.node_rank)]
        return [sys.executable, "-m", "paddle.distributed.launch", *where, f"--nproc_per_node={nproc}", *devices,
                "--log_dir", log_dir, script, *args]

    def distributed_init(self) -> tuple[int, int]:
        if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) <= 1:
            return 0, 1
        dist.init_parallel_env()
        return dist.get_rank(), dist.get_world_size()

    def wrap_data_parallel(self, module: Any) -> Any:
        return paddle.DataParallel(module)

    def all_reduce_mean(self, values: list[float]) -> list[float]:
        t = paddle.to_tensor(np.array(values, "float64"))
        dist.all_reduce(t)
        return (t.numpy() / dist.get_world_size()).tolist()

    def broadcast_array(self, value: np.ndarray) -> np.ndarray:
        t = paddle.to_tensor(np.array(value, order="C"))
        dist.broadcast(t, src=0)
        return t.numpy()
