"""Disk and files, and what was silently accepted (issue #14): each case ends in one `error:` line naming
the file, key or value and what is allowed (exit 2), or does what the README documents with one
`warning:` line, and leaves no half-written file behind. Runs are 2-4 steps of the mlp on digits."""
import errno
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dualml import checkpoint
from dualml.checkpoint import TEMP_NAME, digest, load_weights
from dualml.cli.main import main
from dualml.errors import DualmlWarning, WeightsFileError
from dualml.onnx import ort
from dualml.testing import selected_backends

BACKEND = selected_backends()[0]
#: pyproject's pytest settings ignore UserWarning (the frameworks'); dualml's own are what these tests read
pytestmark = pytest.mark.filterwarnings("always::dualml.errors.DualmlWarning")
TRAIN = ["train", f"backend={BACKEND}", "model=mlp"]


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Exit status and the stderr lines of ``dualml *args`` run in this process."""
    capsys.readouterr()
    rc = main(list(args))
    return rc, capsys.readouterr().err.splitlines()


def one_error(lines: list[str]) -> str:
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and not [ln for ln in lines if "Traceback" in ln], lines
    return errors[0]


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_NAME.match(p.name)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-step run folder (cosine schedule planned for 2 steps), copied by :func:`run`."""
    run = tmp_path_factory.mktemp("files") / "run"
    assert main([*TRAIN, "trainer.max_steps=2", f"trainer.run_dir={run}", "-q"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def resume(run: Path, steps: int) -> list[str]:
    return [*TRAIN, f"trainer.max_steps={steps}", f"trainer.run_dir={run}", "trainer.resume=true"]


def rewrite(path: Path, **changes) -> None:
    """Edit a checkpoint's metadata in place, keeping its tensors and its recorded sha256."""
    from safetensors import safe_open
    from safetensors.numpy import save

    arrays, _ = load_weights(path)
    with safe_open(str(path), framework="numpy") as fh:
        meta = json.loads(fh.metadata()["dualml"])
    meta.update(changes)
    path.write_bytes(save(arrays, metadata={"dualml": json.dumps(meta)}))


# ----------------------------------------------------------------------------- 1. checkpoint metadata
def test_a_checkpoint_whose_metadata_was_edited_is_refused(run, capsys):
    last = run / "last.safetensors"
    rewrite(last, step=1)
    before = last.read_bytes()
    rc, err = cli(capsys, *resume(run, 4))
    assert rc == 2 and one_error(err) == (
        f"error: {last}: checksum mismatch: the tensors or the metadata (step, config) were modified or "
        "corrupted after saving")
    assert last.read_bytes() == before and not temps(run)


def test_a_v1_checkpoint_loads_with_a_warning_that_its_metadata_is_unchecked(run):
    last = run / "last.safetensors"
    arrays, _ = load_weights(last)
    rewrite(last, format="dualml-canonical-v1", sha256=digest(arrays))
    with pytest.warns(DualmlWarning, match=r"is a dualml-canonical-v1 file: its tensors are checked, its "
                                           r"metadata \(step, config\) is not"):
        _, meta = load_weights(last)
    assert meta["step"] == 2
    rewrite(last, format="dualml-canonical-v9")
    with pytest.raises(WeightsFileError, match=r"format 'dualml-canonical-v9' is not allowed; allowed: "
                                               r"dualml-canonical-v1, dualml-canonical-v2"):
        load_weights(last)


# ----------------------------------------------------------------------------- 2. resume re-plans the lr
def test_resuming_with_more_steps_warns_that_the_lr_curve_changes(run, capsys):
    rc, err = cli(capsys, *resume(run, 4))
    assert rc == 0
    warned = [ln for ln in err if "re-plans" in ln]
    assert len(warned) == 1 and warned[0].startswith(
        "warning: resume re-plans the cosine lr schedule from 2 to 4 total steps (trainer.epochs or "
        "trainer.max_steps changed), so the lr curve changes; the last step ran at lr ")
    rc, err = cli(capsys, *resume(run, 4))  # the same plan again: nothing to say
    assert rc == 0 and not [ln for ln in err if "re-plans" in ln]


def test_a_constant_schedule_extended_on_resume_is_not_a_change(tmp_path, capsys):
    run, const = tmp_path / "c", "trainer.schedule.name=constant"
    assert main([*TRAIN, const, "trainer.max_steps=2", f"trainer.run_dir={run}", "-q"]) == 0
    rc, err = cli(capsys, *resume(run, 3), const)
    assert rc == 0 and not [ln for ln in err if "re-plans" in ln]


# ----------------------------------------------------------------------------- 3. backend=auto per model
def test_backend_auto_does_not_reuse_a_decision_measured_for_another_model(tmp_path, capsys, monkeypatch):
    from test_decide import bench_report, write_bench

    def cmd_bench(cfg):
        write_bench(tmp_path, model=cfg.model.name)
        return 0
    monkeypatch.setitem(sys.modules, "dualml.cli.bench", types.SimpleNamespace(cmd_bench=cmd_bench))
    write_bench(tmp_path)
    out = f"out_dir={tmp_path}"
    assert cli(capsys, "config", "backend=auto", "model=cnn", out)[0] == 0
    # mlp, with no bench of its own and no bench allowed: refused, naming the report it needs
    rc, err = cli(capsys, "config", "backend=auto", "model=mlp", "decide.run_bench=false", out)
    assert rc == 2 and one_error(err).startswith(f"error: no bench report at {tmp_path}/bench/mlp/report.json")
    # bench allowed: re-measured for mlp, and the line says why
    rc, err = cli(capsys, "config", "backend=auto", "model=mlp", out)
    line = [ln for ln in err if ln.startswith("backend=auto")]
    assert rc == 0 and len(line) == 1 and "bench mlp" in line[0]
    assert f"decided now: it was measured for model cnn ({tmp_path}/bench/cnn/report.json), not model=mlp" in line[0]
    # a report measured on other data cannot be fixed by deciding again: refused with what to run
    write_bench(tmp_path, bench_report(created="2025-05-05T00:00:00+00:00") | {"data": "other"})
    rc, err = cli(capsys, "config", "backend=auto", "model=cnn", out)
    assert rc == 2 and one_error(err) == (
        "error: backend=auto: no decision for this config: it was measured on data other, not data=digits; run "
        "`dualml bench model=cnn data=digits` to measure it, or choose backend=torch or backend=paddle")


# ----------------------------------------------------------------------------- 4. predict
@pytest.fixture
def onnx_model(tmp_path) -> Path:
    """output = input @ W on [batch, 4] float32 -> [batch, 3]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", [ort.INPUT_NAME, "W"], [ort.OUTPUT_NAME])], "tiny",
        [helper.make_tensor_value_info(ort.INPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, 4])],
        [helper.make_tensor_value_info(ort.OUTPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, 3])],
        [numpy_helper.from_array(w, "W")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.save(tmp_path / "x.npy", np.ones((5, 4), np.float32))
    return path


def test_predict_given_a_checkpoint_says_to_export_it_first(run, tmp_path, capsys, onnx_model):
    ckpt = run / "best.safetensors"
    rc, err = cli(capsys, "predict", str(ckpt), f"input={tmp_path / 'x.npy'}")
    assert rc == 2 and one_error(err) == (
        f"error: {ckpt} is a dualml checkpoint (safetensors weights), not an ONNX model; run "
        f"`dualml export checkpoint={ckpt} out=model.onnx` first and give model.onnx")


def test_predict_output_naming_a_folder_writes_inside_it(tmp_path, capsys, onnx_model):
    folder = tmp_path / "preds"
    folder.mkdir()
    rc, _ = cli(capsys, "predict", str(onnx_model), f"input={tmp_path / 'x.npy'}", f"output={folder}")
    written = folder / "x-outputs.npy"
    assert rc == 0 and os.listdir(folder) == ["x-outputs.npy"]
    assert np.load(written).shape == (5, 3)
    umask = os.umask(0)
    os.umask(umask)
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask


def test_predict_refuses_nan_rows_naming_them(tmp_path, capsys, onnx_model):
    x = np.ones((6, 4), np.float32)
    x[1, 2], x[4, 0] = np.nan, np.inf
    np.save(tmp_path / "bad.npy", x)
    rc, err = cli(capsys, "predict", str(onnx_model), f"input={tmp_path / 'bad.npy'}", f"output={tmp_path / 'y.npy'}")
    assert rc == 2 and one_error(err) == (
        f"error: input file {tmp_path / 'bad.npy'}: 2 row(s) hold NaN or inf (rows 1, 4); allowed: finite values "
        "(drop or impute those rows first)")
    assert not (tmp_path / "y.npy").exists()


# ----------------------------------------------------------------------------- 5. full disk
@pytest.mark.parametrize("case", ["checkpoint", "resume", "predict"])
def test_a_full_disk_is_one_line_and_the_previous_file_survives(case, run, tmp_path, capsys, monkeypatch,
                                                                onnx_model):
    """The write that fails is picked by its content: a checkpoint, the resume's CSV rewrite, the .npy."""
    marker, target = {"checkpoint": (b"dualml-canonical", run / "last.safetensors"),
                      "resume": (b"step,epoch,loss", run / "steps.csv"),
                      "predict": (b"\x93NUMPY", tmp_path / "y.npy")}[case]
    target.write_bytes(target.read_bytes() if target.exists() else b"previous")
    before = target.read_bytes()
    real = checkpoint._write_all

    def full(fd: int, data: bytes) -> None:
        if marker not in data[:4096]:
            return real(fd, data)
        os.write(fd, data[: len(data) // 2])  # half of it landed before the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint, "_write_all", full)
    if case == "predict":
        args = ["predict", str(onnx_model), f"input={tmp_path / 'x.npy'}", f"output={target}"]
    else:  # checkpoint_every=1: last.safetensors is the first checkpoint the resumed run writes
        args = [*resume(run, 4), "trainer.checkpoint_every=1"]
    rc, err = cli(capsys, *args)
    assert rc == 2 and one_error(err).startswith(f"error: no space left on device writing {target} (")
    assert f"nothing was half-written, any previous {target.name} is unchanged" in one_error(err)
    assert target.read_bytes() == before and not temps(target.parent)
    if case != "predict":
        assert load_weights(run / "last.safetensors")[1]["step"] == 2


# ----------------------------------------------------------------------------- 6. temps of a killed write
def test_resume_removes_stale_temp_files_and_says_how_many_bytes(run, capsys):
    stale = run / ".last.safetensors.k1ll3d_x.tmp"
    stale.write_bytes(b"x" * 1234)
    old = checkpoint.STARTED - 60
    os.utime(stale, (old, old))
    live = run / ".steps.csv.wr1t1ng0.tmp"  # touched after this process started: a live writer's
    live.write_bytes(b"y")
    mine = run / "notes.tmp"                # not the writer's name pattern
    mine.write_bytes(b"z")
    os.utime(mine, (old, old))
    rc, err = cli(capsys, *resume(run, 3))
    assert rc == 0 and f"warning: removed 1 stale temp file(s) (1234 bytes) from {run}: left by a write that was " \
        "killed before it finished" in err
    assert not stale.exists() and live.exists() and mine.exists()


# ----------------------------------------------------------------------------- 7. names that become folders
@pytest.mark.parametrize("override", ["compress.name=../../escape", "compress.name=/tmp/abs", "compress.name=a/b",
                                      "compress.name=", "compress.name=..", "compress.name=x y",
                                      "model.name=../m"])
def test_names_that_become_folders_under_out_dir_are_checked(override, tmp_path, capsys):
    key, value = override.split("=", 1)
    out = tmp_path / "out"
    rc, err = cli(capsys, "compress", f"backend={BACKEND}", "model=cnn", override, f"out_dir={out}")
    line = one_error(err)
    assert rc == 2 and line.startswith(f"error: {key}=") and line.endswith(
        "is not allowed; it becomes a folder or file name under out_dir; allowed: 1-100 letters, digits, '.', "
        "'_' or '-', starting with a letter or digit, no '..' (no path separators, no absolute path)")
    assert not out.exists() and not (tmp_path / "escape").exists()
