"""`dualml bench`: one real side-by-side run on the mlp (tiny repeats), checked against the report
schema `dualml decide` reads; bad settings rejected in one line before any worker starts."""
import contextlib
import io
import json
import math
import re

import numpy as np
import pytest

from dualml.cli import main
from dualml.config import load_config
from dualml.evidence.bench import _dataset
from dualml.zoo import create_model

STATS = ("train_step_ms", "eager_ms_b1", "eager_ms_b64", "ort_ms_b1", "ort_ms_b64")
RATIOS = ("train_step_torch_over_paddle", "eager_b1_torch_over_paddle", "eager_b64_torch_over_paddle",
          "ort_b1_torch_over_paddle", "ort_b64_torch_over_paddle")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["bench", "model=mlp", "data=digits", "bench.repeats=3", "bench.warmup=1", f"out_dir={out_dir}"])
    assert rc == 0, stderr.getvalue()[-2000:]
    return out_dir, stdout.getvalue()


@pytest.mark.backends("torch", "paddle")  # `dualml bench` measures both
def test_report_has_the_schema_for_both_backends(bench):
    out_dir, _ = bench
    report = json.loads((out_dir / "bench" / "mlp" / "report.json").read_text())
    assert (report["model"], report["data"], report["repeats"]) == ("mlp", "digits", 3)
    assert report["created"] and report["machine"]["cpu_count"]
    for b in ("torch", "paddle"):
        r = report["backends"][b]
        for key in STATS:
            s = r[key]
            assert set(s) == {"median_ms", "p10_ms", "p90_ms", "iqr_ms", "n"}, key
            assert math.isfinite(s["median_ms"]) and s["median_ms"] > 0 and s["n"] == 3, (b, key, s)
            assert s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
        assert r["peak_rss_mb"] > 0 and r["peak_rss_delta_mb"] >= 0
        e = r["export"]
        assert e["ok"] is True and e["error"] is None and e["seconds"] > 0 and e["ort_max_abs"] < 1e-5
        assert e["exporter"] == {"torch": "dynamo", "paddle": "paddle2onnx"}[b]
        assert r["int8"]["dynamic"] is True and r["int8"]["static"] is True and r["int8"]["static_ms_b1"] > 0
        assert r["weights_bytes"] > 0 and r["onnx_bytes"] > 0
        assert r["threads"] == 1 and r["inputs"] == "data digits" and r["inputs_note"] is None
    assert report["parity"]["eager_max_abs"] < 1e-5 and report["parity"]["onnx_max_abs"] < 1e-5
    assert report["parity"]["weights_identical"] is True
    for key in RATIOS:
        assert math.isfinite(report["ratios"][key]) and report["ratios"][key] > 0, key
    latest = json.loads((out_dir / "bench" / "latest.json").read_text())
    assert latest["created"] == report["created"] and latest["report"].endswith("mlp/report.json")


def test_markdown_png_and_printed_paths(bench):
    out_dir, stdout = bench
    folder = out_dir / "bench" / "mlp"
    assert (folder / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (folder / "report.md").read_text()
    assert "| train step |" in md and "ONNX export" in md and "Parity" in md
    printed = re.search(r"^report: (\S+?),", stdout, re.M).group(1)
    assert printed == str(folder / "report.json")
    latest = re.search(r"^latest: (\S+)$", stdout, re.M).group(1)
    assert (folder / "report.json").exists() and (out_dir / "bench" / "latest.json").samefile(latest)


@pytest.mark.parametrize("override, key", [("bench.repeats=0", "bench.repeats"),
                                           ("bench.min_seconds=-1", "bench.min_seconds")])
def test_bad_settings_are_one_line(override, key, capsys):
    assert main(["bench", "model=mlp", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {key}=") and "allowed" in err


def test_model_that_does_not_fit_the_data_gets_random_inputs():
    cfg = load_config(["model=transformer", "data=digits"])
    ds, source, note = _dataset(cfg, create_model("transformer", vocab_size=1000, seq_len=8), 64)
    assert source == "random" and "data digits does not fit" in note
    assert ds.train.x.dtype.name == "int64" and ds.train.x.shape[1:] == (8,) and len(ds.train.y) >= 64


def test_failed_export_is_recorded_not_raised(tmp_path):
    from dualml.evidence.bench import export_record

    model = create_model("mlp")
    sample = model.input_spec(2)[0].sample(np.random.default_rng(0))
    record, full = export_record(model, "torch", {}, tmp_path / "m.onnx", sample)  # no weights: build fails
    assert full is None and record["ok"] is False and record["ort_max_abs"] is None and record["exporter"] is None
    assert "WeightsError" in record["error"] and record["seconds"] >= 0 and not (tmp_path / "m.onnx").exists()


def test_worker_failure_is_one_line(tmp_path, capsys):
    assert main(["bench", "model=mlp", "data.batch_size=100000", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: bench worker for torch failed: ConfigError: data.batch_size=100000 is not allowed with a train split")
    assert (tmp_path / "bench" / "mlp" / "logs" / "torch.log").exists()
