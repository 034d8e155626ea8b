"""trainer.device: the neutral choice (dualml/devices.py) for any GPU count, the one-line errors on this
machine, the Backend contract's CPU-only defaults, and (on a GPU machine only) training on cuda."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dualml.backend import Backend, get_backend
from dualml.config import load_config
from dualml.devices import CPU, Device, parse_device, parse_nodes, resolve_device
from dualml.errors import BackendError, ConfigError
from dualml.testing import selected_backends

ENV = {**os.environ, "TQDM_DISABLE": "1"}


def test_resolve_for_every_gpu_count():
    assert resolve_device("cpu", 4)[0] == CPU
    assert resolve_device("auto", 0)[0] == CPU
    dev, note = resolve_device("auto", 2, local_rank=1, local_ranks=2, backend="torch")
    assert dev == Device("cuda", 1) and "cuda:1" in note and "2 CUDA GPU" in note
    assert resolve_device("auto", 1, local_ranks=2)[0] == CPU  # two ranks, one GPU: gloo on cpu
    assert resolve_device("cuda", 2, local_rank=1, local_ranks=2)[0] == Device("cuda", 1)
    assert resolve_device("CUDA:1", 2)[0] == Device("cuda", 1)
    assert str(Device("cuda", 3)) == "cuda:3" and str(CPU) == "cpu"


@pytest.mark.parametrize("value,gpus,ranks,needle", [
    ("cuda:7", 1, 1, "sees 1 GPU(s) on this machine; allowed: auto, cpu, cuda, cuda:0"),
    ("cuda", 0, 1, "sees no CUDA GPU on this machine; allowed: auto, cpu"),
    ("cuda:0", 0, 1, "sees no CUDA GPU"),
    ("cuda", 1, 2, "each rank needs its own; allowed: trainer.devices <= 1"),
    ("cuda:0", 2, 2, "a fixed GPU cannot serve several ranks"),
    ("gpu:0", 1, 1, "allowed: auto, cpu, cuda, cuda:N"),
    ("cuda:-1", 1, 1, "allowed: auto, cpu, cuda, cuda:N"),
    ("", 1, 1, "allowed: auto, cpu, cuda, cuda:N"),
])
def test_bad_devices_are_one_line(value, gpus, ranks, needle):
    with pytest.raises(ConfigError) as e:
        resolve_device(value, gpus, local_ranks=ranks)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_node_keys_checked():
    t = {"nnodes": 2, "node_rank": 1, "master_addr": "127.0.0.1", "master_port": 29500, "rendezvous_timeout_s": 5}
    assert parse_nodes(t).multi
    for key, bad, needle in [("node_rank", 2, "allowed: 0..1"), ("nnodes", 0, "integer >= 1"),
                             ("master_port", 70000, "1..65535"), ("rendezvous_timeout_s", 0, "> 0"),
                             ("rendezvous_timeout_s", 1e9, "<= 3600"), ("master_addr", "a b", "host name")]:
        with pytest.raises(ConfigError, match=needle):
            parse_nodes({**t, key: bad})
    with pytest.raises(ConfigError, match="trainer.device=tpu"):
        load_config(["trainer.device=tpu"])
    with pytest.raises(ConfigError, match="node_rank=3"):
        load_config(["trainer.nnodes=2", "trainer.node_rank=3"])
    assert parse_device("auto") == ("auto", None)


def test_contract_defaults_mean_cpu_only():
    """A third adapter that knows nothing of devices still resolves auto to cpu and refuses cuda."""
    class Minimal(Backend):  # only the defaults under test are called
        name = "minimal"

    for m in list(Minimal.__abstractmethods__):
        setattr(Minimal, m, lambda self, *a, **k: None)
    Minimal.__abstractmethods__ = frozenset()
    be = Minimal()
    assert be.device_count() == 0 and be.local_rank() == 0 and be.device_peak_bytes() is None
    assert resolve_device("auto", be.device_count())[0] == CPU
    be.set_device(CPU)
    assert be.to_device("net") == "net"
    with pytest.raises(BackendError, match="cpu only"):
        be.set_device(Device("cuda", 0))


@pytest.mark.parametrize("backend", selected_backends())
@pytest.mark.parametrize("value", ["cuda", "cuda:7", "tpu"])
def test_cli_bad_device_exit_2(backend, value, tmp_path):
    if value != "tpu" and get_backend(backend).device_count() > 0:
        pytest.skip("this machine has a GPU: cuda is allowed here (checked by the GPU tests)")
    out = subprocess.run([sys.executable, "-m", "dualml", "train", f"backend={backend}", "model=mlp",
                          "trainer.max_steps=1", f"trainer.device={value}", f"trainer.run_dir={tmp_path / 'r'}"],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: trainer.device={value} is not allowed"), out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("backend", selected_backends())
def test_cpu_run_records_device(backend):
    from dualml.train.trainer import Trainer

    t = Trainer(load_config([f"backend={backend}", "model=mlp", "trainer.max_steps=2", "trainer.device=cpu"]),
                write=False, progress=False)
    assert t.fit()["device"] == "cpu" and t.device_note == "trainer.device=cpu: training on cpu"


# ---------------------------------------------------------------------------------------------- GPU only
def _gpus(backend: str) -> int:
    return get_backend(backend).device_count()


@pytest.mark.parametrize("backend", selected_backends())
def test_cuda_training_matches_cpu_and_resumes_on_cpu(backend, tmp_path):
    if _gpus(backend) == 0:
        pytest.skip(f"no CUDA GPU visible to {backend} on this machine (trainer.device=cuda needs one)")
    from dualml.train.trainer import Trainer

    common = [f"backend={backend}", "model=cnn", "trainer.max_steps=10", "trainer.optimizer.name=sgd",
              "trainer.optimizer.lr=0.05", "trainer.schedule.name=constant", "trainer.dtype=float64"]
    gpu = Trainer(load_config([*common, "trainer.device=cuda", f"trainer.run_dir={tmp_path / 'g'}"]), progress=False)
    m = gpu.fit()
    assert m["device"] == "cuda:0"
    cpu = Trainer(load_config([*common, "trainer.device=cpu"]), write=False, progress=False)
    cpu.fit()
    # float64 on both devices: the same function; kernels differ in summation order only (1e-9 is 1e5 ulps)
    np.testing.assert_allclose([r["loss"] for r in gpu.history.steps], [r["loss"] for r in cpu.history.steps],
                               rtol=1e-9, atol=1e-12)
    # the GPU run's checkpoint resumes on the CPU
    more = Trainer(load_config([*common, "trainer.max_steps=12", "trainer.device=cpu", "trainer.resume=true",
                                f"trainer.run_dir={tmp_path / 'g'}"]), progress=False)
    assert more.fit()["steps"] == 12


@pytest.mark.parametrize("backend", selected_backends())
def test_amp_autocasts_on_the_tensors_device(backend):
    if _gpus(backend) == 0:
        pytest.skip(f"no CUDA GPU visible to {backend} on this machine (fp16 autocast on cuda needs one)")
    from dualml.train.trainer import Trainer

    t = Trainer(load_config([f"backend={backend}", "model=cnn", "trainer.max_steps=5", "trainer.amp=fp16",
                             "trainer.device=cuda"]), write=False, progress=False)
    m = t.fit()
    assert m["device"] == "cuda:0" and np.isfinite(m["test_loss"])


def test_parity_device_cpu_and_errors(tmp_path):
    base = [sys.executable, "-m", "dualml", "parity", "parity.zoo=false", "parity.only=Linear", f"out_dir={tmp_path}"]
    ok = subprocess.run([*base, "parity.device=cpu"], capture_output=True, text=True, timeout=300, env=ENV)
    assert ok.returncode == 0, ok.stderr
    import json

    assert json.loads((tmp_path / "parity" / "report.json").read_text())["device"] == {"torch": "cpu", "paddle": "cpu"}
    bad = subprocess.run([*base, "parity.device=tpu"], capture_output=True, text=True, timeout=300, env=ENV)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: parity.device=tpu is not allowed")


def test_parity_on_cuda_same_tolerances(tmp_path):
    if min(_gpus(b) for b in ("torch", "paddle")) == 0:
        pytest.skip("no CUDA GPU visible to both torch and paddle on this machine (parity.device=cuda needs one)")
    out = subprocess.run([sys.executable, "-m", "dualml", "parity", "parity.device=cuda", "parity.onnx=false",
                          f"out_dir={tmp_path}"], capture_output=True, text=True, timeout=900, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
