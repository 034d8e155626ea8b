"""What a command prints: dualml's lines only, the frameworks' chatter in the run's log, -q and -v."""
import re
import subprocess
import sys
import warnings

import pytest

from dualml.cli.log import result, say, warn
from dualml.cli.main import MODULES, main
from dualml.errors import DualmlWarning
from dualml.testing import selected_backends

#: glog's line prefix (``I1203 21:30:49.583518 31902 file.cc:212] ...``) and Python's warning format
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)
PY_WARNING = re.compile(r"\w+Warning: ")


def _dualml(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualml", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("backend", selected_backends())
def test_train_prints_no_framework_chatter_and_keeps_it_in_the_run_log(backend, tmp_path):
    run = tmp_path / "run"
    out = _dualml("train", f"backend={backend}", "model=cnn", "trainer.max_steps=3", f"trainer.run_dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    terminal = out.stdout + out.stderr
    assert not PY_WARNING.search(terminal) and not GLOG.search(terminal), terminal[-2000:]
    assert out.stdout.splitlines() == [f"run folder: {run} (metrics.json, curves.png, steps.csv, epochs.csv, tb/, "
                                       "best/last.safetensors)"]
    log = (run / "dualml.log").read_text()
    assert f"dualml train backend={backend}" in log.splitlines()[0] and "test accuracy" in log


def test_export_prints_no_framework_chatter(tmp_path):
    """torch's exporter warns (LeafSpec FutureWarning) and paddle's glog announces its executor on every
    export: neither reaches the terminal, the export's log keeps the Python ones."""
    for backend in selected_backends():
        onnx = tmp_path / f"m-{backend}.onnx"
        out = _dualml("export", f"backend={backend}", "model=mlp", f"out={onnx}")
        assert out.returncode == 0, out.stderr[-2000:]
        terminal = out.stdout + out.stderr
        assert not PY_WARNING.search(terminal) and not GLOG.search(terminal), terminal[-2000:]
        assert f"report: {onnx.with_suffix('.report.json')}" in out.stdout and onnx.with_suffix(".log").is_file()


def test_quiet_leaves_the_answer_only(tmp_path):
    run = tmp_path / "run"
    out = _dualml("-q", "train", f"backend={selected_backends()[0]}", "model=mlp", "trainer.max_steps=3",
                  f"trainer.run_dir={run}")
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]  # no bar, no summary line
    assert out.stdout.startswith(f"run folder: {run}")


def _fake_command(monkeypatch, body):
    """``dualml layout`` replaced by ``body``: the command line around it is what these tests check."""
    monkeypatch.setattr(MODULES["layout"], "cmd_layout", lambda cfg, overrides: body(cfg))


def test_framework_warnings_go_to_the_log_and_dualml_warnings_to_the_user(monkeypatch, capsys, tmp_path):
    def body(cfg):
        from dualml.cli.log import keep_in
        keep_in(tmp_path)
        say("a step")
        warnings.warn("deprecated somewhere inside a framework", FutureWarning, stacklevel=1)
        warnings.warn("weights were narrowed", DualmlWarning, stacklevel=1)
        warn("a note from the command")
        result("report: here")
        return 0
    _fake_command(monkeypatch, body)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["layout"]) == 0
    out = capsys.readouterr()
    assert out.out == "report: here\n"
    assert out.err.splitlines() == ["a step", "warning: weights were narrowed", "warning: a note from the command"]
    log = (tmp_path / "dualml.log").read_text()
    assert "FutureWarning: deprecated somewhere inside a framework" in log and "RESULT dualml: report: here" in log
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["-v", "layout"]) == 0  # -v: the framework's warning on the terminal too
    assert "FutureWarning: deprecated somewhere inside a framework" in capsys.readouterr().err
    assert main(["layout", "-q"]) == 0  # -q: results and warnings only
    out = capsys.readouterr()
    assert out.out == "report: here\n" and "a step" not in out.err and "warning: a note from the command" in out.err


def test_unexpected_failure_is_one_line_and_its_traceback_needs_v(monkeypatch, capsys, tmp_path):
    def body(cfg):
        from dualml.cli.log import keep_in
        keep_in(tmp_path)
        raise RuntimeError("kernel exploded")
    _fake_command(monkeypatch, body)
    assert main(["layout"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: RuntimeError: kernel exploded") and "-v" in err[0]
    assert "Traceback (most recent call last)" in (tmp_path / "dualml.log").read_text()
    with pytest.raises(RuntimeError, match="kernel exploded"):
        main(["-v", "layout"])


def test_quiet_and_verbose_together_is_refused(capsys):
    assert main(["-q", "train", "-v"]) == 2
    assert "-q and -v are not allowed together" in capsys.readouterr().err
