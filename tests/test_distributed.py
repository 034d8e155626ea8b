"""Multi-process data parallel on each framework's own engine (torchrun + DDP, paddle.distributed.launch
+ DataParallel), 2 CPU processes over gloo: ranks end identical, and equal to one process on the
same global batch."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dualml.checkpoint import load_weights
from dualml.config import load_config
from dualml.testing import selected_backends
from dualml.train.trainer import Trainer

COMMON = ["model=mlp", "trainer.max_steps=20", "trainer.optimizer.name=sgd", "trainer.optimizer.lr=0.1",
          "trainer.schedule.name=constant"]  # plain SGD: measured 1.5e-8 from one process


@pytest.mark.parametrize("backend", selected_backends())
def test_two_process_data_parallel_matches_single_process(backend, tmp_path):
    run = tmp_path / "dp"
    out = subprocess.run([sys.executable, "-m", "dualml", "train", f"backend={backend}", *COMMON, "trainer.devices=2",
                          f"trainer.run_dir={run}"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # the launcher's own INFO lines stay in its log file; the user gets dualml's summary
    assert "LAUNCH INFO" not in out.stdout + out.stderr and f"run folder: {run}" in out.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["rank_weight_diff_mean"] == 0.0
    single = Trainer(load_config([f"backend={backend}", *COMMON]), write=False, progress=False)
    single.fit()
    import dualml
    ref = dualml.get_weights(single.net)
    dp, _ = load_weights(run / "last.safetensors")
    for k, v in ref.items():
        np.testing.assert_allclose(dp[f"model/{k}"], v, rtol=1e-5, atol=1e-6, err_msg=k)
    steps = [float(r.split(",")[2]) for r in (run / "steps.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(steps, [r["loss"] for r in single.history.steps], rtol=1e-5)
