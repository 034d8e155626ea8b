"""Several machines, simulated on this one: 2 nodes x 1 process over 127.0.0.1 (two `dualml train` in
parallel, node_rank 0 and 1) through torchrun's static rendezvous and paddle.distributed.launch --master.
Both ranks end identical and equal to one process on the same global batch; a missing master is a
one-line error after the bounded wait."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dualml.checkpoint import load_weights
from dualml.config import load_config
from dualml.testing import selected_backends
from dualml.train.trainer import Trainer

COMMON = ["model=mlp", "trainer.max_steps=20", "trainer.optimizer.name=sgd", "trainer.optimizer.lr=0.1",
          "trainer.schedule.name=constant"]  # plain SGD, as tests/test_distributed.py
ENV = {**os.environ, "TQDM_DISABLE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dualml", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


@pytest.mark.parametrize("backend", selected_backends())
def test_two_nodes_match_single_process(backend, tmp_path):
    run = tmp_path / "nodes"
    keys = [f"backend={backend}", *COMMON, "trainer.nnodes=2", f"trainer.master_port={_free_port()}",
            "trainer.master_addr=127.0.0.1", "trainer.rendezvous_timeout_s=240", f"trainer.run_dir={run}"]
    procs = [_train(*keys, f"trainer.node_rank={r}") for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, o[-2000:] + e[-2000:]
    assert f"run folder: {run}" in outs[0][0] and "node 1 done" in outs[1][1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["rank_weight_diff_mean"] == 0.0
    single = Trainer(load_config([f"backend={backend}", *COMMON]), write=False, progress=False)
    single.fit()
    import dualml
    dp, _ = load_weights(run / "last.safetensors")
    for k, v in dualml.get_weights(single.net).items():
        np.testing.assert_allclose(dp[f"model/{k}"], v, rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("backend", selected_backends())
@pytest.mark.parametrize("node_rank,needle", [(1, "node 1 of 2 could not join the master"),
                                              (0, "node 0 of 2 (the master, 127.0.0.1:")])
def test_missing_node_is_one_line_after_the_bound(backend, node_rank, needle, tmp_path):
    """Node 1 without a master, or the master without node 1: an error after the bound, not a hang."""
    t0 = time.monotonic()
    p = _train(f"backend={backend}", *COMMON, "trainer.nnodes=2", f"trainer.node_rank={node_rank}",
               f"trainer.master_port={_free_port()}", "trainer.rendezvous_timeout_s=5", f"trainer.run_dir={tmp_path}/r")
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0 and time.monotonic() - t0 < 90
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no rendezvous within trainer.rendezvous_timeout_s=5" in errors[0], err
    assert needle in errors[0], errors[0]


def test_node_rank_out_of_range_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dualml", "train", "trainer.nnodes=2", "trainer.node_rank=2"],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: trainer.node_rank=2 is not allowed with trainer.nnodes=2; allowed: 0..1")
