"""The Trainer: quality, accumulation, clipping, groups, faults, run folders and resume."""
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dualml
from dualml.checkpoint import load_weights
from dualml.config import load_config
from dualml.errors import ConfigError, DualmlError
from dualml.testing import backend_pairs, selected_backends
from dualml.train.trainer import Trainer, TrainingDiverged


def trainer(*overrides: str, write: bool = False, **kw) -> Trainer:
    return Trainer(load_config(list(overrides)), write=write, progress=False, **kw)


#: The cnn recipe (configs/model/cnn.yaml: 20 epochs, best checkpoint by val_loss) over seeds 0-4 (each seed
#: also draws the split), measured by benchmarks/bench_recipe.py on a 2-core AVX2 machine: mean 0.9917 +- 0.0050
#: (std over seeds) on torch and on paddle (the same accuracy for every seed), seeds 0.9861-0.9972. Emulating
#: another CPU: every initial weight one ulp up gave means 0.9917 (torch) / 0.9911 (paddle), torch's
#: non-vectorised kernels (ATEN_CPU_CAPABILITY=default) 0.9917; lowest single run of all 25: 0.9833. Seeds 0-9
#: (torch, scratch sweep) gave means 0.9878-0.9886 across those variants, lowest run 0.9806. The shared
#: defaults (10 epochs, val_acc) gave 0.9783 +- 0.0062 with a seed at 0.9667. One seed's accuracy is a
#: property of the CPU (a max-pool tie flips); a five-seed mean is not: its bar sits 0.011 (two per-seed
#: std) under the lowest measured mean, a single run's bar 0.013 under the lowest measured run.
CNN_SEEDS = range(5)
CNN_MEAN_BAR = 0.98
CNN_RUN_BAR = 0.97


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("backend", selected_backends())
def test_cnn_recipe_reaches_98_percent_mean_on_digits(backend, tmp_path):
    """What ``dualml train model=cnn`` does with the shipped configs, for five seeds: the mean test
    accuracy is what holds on any CPU, a single seed is not (see the numbers above)."""
    accs = []
    for seed in CNN_SEEDS:
        run = tmp_path / f"run{seed}"
        metrics = trainer(f"backend={backend}", "model=cnn", f"seed={seed}", f"trainer.run_dir={run}",
                          write=True).fit()
        accs.append(metrics["test_acc"])
        if seed == CNN_SEEDS[0]:
            _check_run_folder(run, metrics)
    assert np.mean(accs) >= CNN_MEAN_BAR and min(accs) >= CNN_RUN_BAR, accs


def _check_run_folder(run: Path, metrics: dict) -> None:
    for name in ("config.yaml", "steps.csv", "epochs.csv", "metrics.json", "curves.png", "best.safetensors",
                 "last.safetensors"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["test_acc"] == metrics["test_acc"]
    assert len((run / "steps.csv").read_text().splitlines()) == metrics["steps"] + 1
    tags = _tensorboard_tags(run / "tb")
    assert {"train/loss", "train/lr", "epoch/val_acc"} <= tags


def test_model_file_carries_its_trainer_recipe(tmp_path):
    """configs/model/cnn.yaml's ``trainer:`` block lands in ``trainer`` (not in the model's constructor
    arguments), the command line still wins, other models keep the shared defaults, and a bad recipe key
    is a ConfigError naming the model file."""
    import shutil

    cnn = load_config(["model=cnn"])
    assert "trainer" not in cnn.model and cnn.trainer.epochs == 20
    assert cnn.trainer.early_stopping.monitor == "val_loss" and cnn.trainer.optimizer.lr == 1e-2
    assert load_config(["model=cnn", "trainer.epochs=3"]).trainer.epochs == 3
    mlp = load_config(["model=mlp"])
    assert mlp.trainer.epochs == 10 and mlp.trainer.early_stopping.monitor == "val_acc"
    root = tmp_path / "configs"
    shutil.copytree(dualml.config.config_dir(), root)
    with (root / "model" / "cnn.yaml").open("a") as fh:
        fh.write("  epocs: 5\n")
    with pytest.raises(ConfigError, match=r"cnn.yaml \(the model's trainer recipe\): unknown config key "
                                          r"'trainer.epocs'.*did you mean 'trainer.epochs'"):
        load_config(["model=cnn"], root=root)
    (root / "model" / "cnn.yaml").write_text("name: cnn\ntrainer:\n  epochs: ten\n")
    with pytest.raises(ConfigError, match="trainer.epochs='ten' is not allowed; expected an integer"):
        load_config(["model=cnn"], root=root)


def _tensorboard_tags(folder: Path) -> set[str]:
    """Read TensorBoard event files (TFRecord framing) without TensorFlow."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + n + 4
    return tags


def _weights(t: Trainer) -> dict[str, np.ndarray]:
    return dualml.get_weights(t.net)


@pytest.mark.parametrize("backend", selected_backends())
def test_gradient_accumulation_equals_big_batch(backend):
    common = [f"backend={backend}", "model=mlp", "trainer.max_steps=15", "trainer.optimizer.name=sgd",
              "trainer.optimizer.lr=0.1", "trainer.optimizer.momentum=0.9", "trainer.schedule.name=constant"]
    big = trainer(*common, "data.batch_size=64")
    small = trainer(*common, "data.batch_size=32", "trainer.accumulate=2")
    big.fit()
    small.fit()
    a, b = _weights(big), _weights(small)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose([r["loss"] for r in small.history.steps], [r["loss"] for r in big.history.steps],
                               rtol=1e-5)


@pytest.mark.parametrize("backend", selected_backends())
def test_clipping_bounds_the_update(backend):
    t = trainer(f"backend={backend}", "model=mlp", "trainer.max_steps=3", "trainer.clip_norm=0.01",
                "trainer.optimizer.name=sgd", "trainer.optimizer.lr=1.0", "trainer.schedule.name=constant")
    before = _weights(t)
    t.fit()
    after = _weights(t)
    moved = np.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))
    assert all(r["grad_norm"] > 0.01 for r in t.history.steps)  # the clip was active
    assert moved <= 3 * 0.01 * 1.0 + 1e-6


@pytest.mark.parametrize("backend", selected_backends())
def test_freeze_and_param_group_multiplier(backend):
    t = Trainer(load_config([f"backend={backend}", "model=mlp", "trainer.max_steps=5", "trainer.optimizer.name=sgd",
                             "trainer.optimizer.lr=0.1", "trainer.schedule.name=constant"]),
                write=False, progress=False)
    cfg = t.cfg
    cfg.trainer.freeze = ["body.0.*"]
    cfg.trainer.param_groups = [{"params": "head.*", "lr_mult": 0.0}]
    t = Trainer(cfg, write=False, progress=False)
    before = _weights(t)
    t.fit()
    after = _weights(t)
    assert np.array_equal(before["body.0.weight"], after["body.0.weight"])  # frozen
    assert np.array_equal(before["head.weight"], after["head.weight"])  # lr multiplier 0
    assert not np.array_equal(before["body.2.weight"], after["body.2.weight"])  # trained


def test_bad_patterns_and_values_are_named():
    with pytest.raises(ConfigError, match="pattern 'encoder.\\*'"):
        cfg = load_config(["model=mlp"])
        cfg.trainer.freeze = ["encoder.*"]
        Trainer(cfg, write=False, progress=False)
    with pytest.raises(ConfigError, match="trainer.optimizer.name=rmsprop is not allowed"):
        trainer("trainer.optimizer.name=rmsprop")
    with pytest.raises(ConfigError, match="trainer.accumulate=0"):
        trainer("trainer.accumulate=0")
    with pytest.raises(ConfigError, match="trainer.amp=fp8 is not allowed; allowed: null, bf16, fp16"):
        trainer("trainer.amp=fp8")


def test_data_that_does_not_fit_is_refused_before_training():
    with pytest.raises(ConfigError, match="digits"):
        trainer("model=mlp", "model.in_features=10")
    with pytest.raises(ConfigError, match="num_classes=10"):
        trainer("model=mlp", "model.num_classes=5")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = trainer("model=mlp", "trainer.optimizer.name=sgd", "trainer.optimizer.lr=1e6", "trainer.epochs=5",
                "trainer.schedule.name=constant", "trainer.checkpoint_every=1", f"trainer.run_dir={tmp_path / 'r'}",
                write=True)
    with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as err:
        t.fit()
    failed_at = int(str(err.value).split("at step ")[1].split()[0])
    arrays, meta = load_weights(tmp_path / "r" / "last.safetensors")
    assert meta["step"] == failed_at  # the last completed step before the bad one
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("model/"))


def test_existing_run_folder_is_never_overwritten(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with pytest.raises(DualmlError, match="already exists"):
        trainer("model=mlp", f"trainer.run_dir={run}", write=True).fit()
    assert (run / "keep.txt").read_text() == "mine" and len(list(run.iterdir())) == 1


def test_resume_with_another_model_is_refused(tmp_path):
    run = tmp_path / "r"
    trainer("model=mlp", "trainer.max_steps=3", f"trainer.run_dir={run}", write=True).fit()
    stamp = (run / "last.safetensors").stat().st_mtime_ns
    with pytest.raises(DualmlError, match="cannot resume .*model: checkpoint is mlp"):
        trainer("model=mlp", "model.hidden=[32]", "trainer.resume=true", f"trainer.run_dir={run}", write=True).fit()
    with pytest.raises(DualmlError, match="trainer.optimizer.lr: checkpoint 0.01, now 0.5"):
        trainer("model=mlp", "trainer.optimizer.lr=0.5", "trainer.resume=true", f"trainer.run_dir={run}",
                write=True).fit()
    assert (run / "last.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("backend", selected_backends())
def test_early_stopping(backend):
    t = trainer(f"backend={backend}", "model=mlp", "trainer.epochs=10", "trainer.optimizer.lr=1e-9",
                "trainer.schedule.name=constant", "trainer.early_stopping.patience=2")
    metrics = t.fit()
    assert metrics["stopped_early"] and metrics["epochs"] == 3, metrics


@pytest.mark.parametrize("backend", selected_backends())
def test_rng_is_reseeded_per_step_only_when_a_layer_draws_from_it(backend, monkeypatch):
    """Dropout masks come from (seed, step), so equal seeds give equal runs and a resumed run draws
    what the uninterrupted one would; without random layers the per-step seeding is skipped."""
    def run(*extra: str) -> tuple[list[float], int]:
        t = trainer(f"backend={backend}", "model=mlp", "trainer.max_steps=6", *extra)
        calls = []
        real = t.be.seed
        monkeypatch.setattr(t.be, "seed", lambda s: (calls.append(s), real(s)))
        t.fit()
        monkeypatch.undo()
        return [r["loss"] for r in t.history.steps], len(calls)

    plain, plain_seeds = run()
    a, a_seeds = run("model.dropout=0.5")
    b, _ = run("model.dropout=0.5")
    other, _ = run("model.dropout=0.5", "seed=1")
    assert plain_seeds == 0 and a_seeds == 6
    assert a == b, "same seed, same dropout masks"
    assert a != plain
    assert other != a


def _train_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dualml", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("backend", selected_backends())
def test_sigkill_then_resume_ends_with_the_same_weights(backend, tmp_path):
    # dropout on: an exact resume then also needs the dropout masks drawn from (seed, step)
    common = [f"backend={backend}", "model=cnn", "model.dropout=0.3", "trainer.max_steps=120",
              "trainer.checkpoint_every=7", "trainer.optimizer.name=adam"]
    full = _train_cli(*common, f"trainer.run_dir={tmp_path / 'full'}")
    killed = _train_cli(*common, f"trainer.run_dir={tmp_path / 'killed'}")
    steps = tmp_path / "killed" / "steps.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        if steps.is_file() and len(steps.read_text().splitlines()) > 40:
            break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    _, meta = load_weights(tmp_path / "killed" / "last.safetensors")
    assert 0 < meta["step"] < 120
    resumed = _train_cli(*common, f"trainer.run_dir={tmp_path / 'killed'}", "trainer.resume=true")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert full.wait() == 0, full.stderr.read()
    a, meta_a = load_weights(tmp_path / "full" / "last.safetensors")
    b, meta_b = load_weights(tmp_path / "killed" / "last.safetensors")
    assert meta_a["step"] == meta_b["step"] == 120
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resume"
    rows = (tmp_path / "killed" / "steps.csv").read_text().splitlines()
    assert len(rows) == 121 and [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 121))


@pytest.mark.parametrize("first,second", backend_pairs())
def test_cross_backend_resume_continues_the_curve(first, second, tmp_path):
    common = ["model=mlp", "trainer.optimizer.name=adam", "trainer.optimizer.lr=1e-3",
              "trainer.schedule.name=constant"]
    ref = trainer(f"backend={first}", *common, "trainer.max_steps=40")
    ref.fit()
    run = tmp_path / "r"
    trainer(f"backend={first}", *common, "trainer.max_steps=20", f"trainer.run_dir={run}",
            "trainer.checkpoint_every=20", write=True).fit()
    cont = trainer(f"backend={second}", *common, "trainer.max_steps=40", f"trainer.run_dir={run}",
                   "trainer.resume=true", write=True)
    metrics = cont.fit()
    assert metrics["resumed_from"] == {"step": 20, "backend": first}
    ours = [r["loss"] for r in cont.history.steps[20:]]
    theirs = [r["loss"] for r in ref.history.steps[20:]]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)  # optimizer state made it across


def test_train_cli_prints_run_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dualml", "train", "model=mlp", "trainer.max_steps=5",
                          f"trainer.run_dir={tmp_path / 'r'}"], capture_output=True, text=True,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr
    assert f"run folder: {tmp_path / 'r'}" in out.stdout


@pytest.mark.parametrize("backend", selected_backends())
def test_own_numpy_data_through_config(backend, tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = (rng.normal(size=(600, 64)) + y[:, None] * 0.8).astype("float32")
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    t = trainer(f"backend={backend}", "model=mlp", "model.num_classes=3", "data=arrays",
                f"data.path={tmp_path / 'mine.npz'}", "trainer.epochs=5")
    assert t.fit()["test_acc"] > 0.9


@pytest.mark.parametrize("backend", selected_backends())
def test_scheduled_learning_rate_reaches_the_optimizer(backend):
    from dualml.train.schedules import schedule

    sched = ["trainer.schedule.name=onecycle", "trainer.schedule.pct_start=0.25"]
    t = trainer(f"backend={backend}", "model=mlp", "trainer.max_steps=40", "trainer.optimizer.name=sgd", *sched)
    t.fit()
    expected = schedule(t.spec.lr, t.sched, 40)
    np.testing.assert_allclose([r["lr"] for r in t.history.steps], expected, rtol=1e-12)
    if backend == "torch":
        assert t.opt.param_groups[0]["lr"] == pytest.approx(expected[-1])
    else:
        assert t.opt.get_lr() == pytest.approx(expected[-1])
