"""The CLI end to end: reports are written where the command says, and exit codes mean something."""
import json
import subprocess
import sys


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualml", *args], capture_output=True, text=True, cwd=cwd)


def test_parity_cli_writes_reports_and_exits_0(tmp_path):
    out = _run("parity", "parity.only=op:add", "parity.zoo=false", f"out_dir={tmp_path}", cwd=None)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "parity" / "report.json").read_text())
    assert report["summary"] == {**report["summary"], "cases": 1, "passed": 1, "failed": 0}
    assert str(tmp_path / "parity" / "report.json") in out.stdout
    assert "| op:add | eval | pass |" in (tmp_path / "parity" / "report.md").read_text()


def test_parity_cli_rejects_same_backend_twice(tmp_path):
    out = _run("parity", "parity.against=torch", f"out_dir={tmp_path}", cwd=None)
    assert out.returncode == 2 and "compare two different backends" in out.stderr


def test_demo_moves_weights_between_backends(tmp_path):
    out = _run("demo", "model=mlp", f"out_dir={tmp_path}", cwd=None)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["roundtrip_bit_exact"] is True and report["forward_max_abs"] < 1e-5
    assert (tmp_path / "demo" / "mlp.safetensors").is_file()


def test_version_and_command_help_list_config_keys(tmp_path):
    out = _run("--version", cwd=None)
    assert out.returncode == 0 and out.stdout.strip().startswith("dualml ")
    out = _run("train", "--help", cwd=None)
    assert out.returncode == 0, out.stderr
    assert "is not allowed" not in out.stdout + out.stderr
    # each key with its default, and the comment next to it in configs/*.yaml as its doc
    assert "trainer.max_steps=null" in out.stdout and "stop after this many optimizer steps" in out.stdout
    assert "model=mlp" in out.stdout and "one of: cnn, forecaster, mlp, resnet18, transformer" in out.stdout
    out = _run("export", "-h", cwd=None)
    assert out.returncode == 0 and "export.quantize=none" in out.stdout and "trainer.epochs" not in out.stdout
    assert not (tmp_path / "reports").exists()
