"""The bad-input battery of issue #14, run as a user would: every case through the installed command
(`python -m dualml ...`) or against a live `dualml serve`, recording the exit status or HTTP status and
the line the user reads. Writes reports/bad_inputs/bad_inputs.json and .md and prints where they went.

Not a test (the tests in tests/test_hardening_*.py and tests/test_serve.py assert each family in
process, fast); this is the end-to-end list the closing note of #14 quotes. About 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import atomic_write

ROOT = Path(__file__).resolve().parent.parent
BACKEND = "torch"


def dualml(*args: str, cwd: Path) -> dict[str, Any]:
    """Exit status and the error/warning lines of one command, and whether a traceback reached the user."""
    env = {**os.environ, "DUALML_PROGRESS": "0"}
    out = subprocess.run([sys.executable, "-m", "dualml", *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=600)
    lines = out.stderr.splitlines()
    said = [ln for ln in lines if ln.startswith(("error:", "warning:"))]
    return {"rc": out.returncode, "said": said, "traceback": "Traceback" in out.stderr}


def verdict(r: dict[str, Any], expect: str) -> str:
    """'ok' when the outcome is the documented one: ``error`` one error line and exit 2; ``warning`` exit 0
    with a warning line; ``fine`` exit 0."""
    if r["traceback"]:
        return "TRACEBACK"
    errors = [s for s in r["said"] if s.startswith("error:")]
    if expect == "error":
        return "ok" if r["rc"] == 2 and len(errors) == 1 else "WRONG"
    if expect == "warning":
        return "ok" if r["rc"] == 0 and any(s.startswith("warning:") for s in r["said"]) else "WRONG"
    return "ok" if r["rc"] == 0 and not errors else "WRONG"


def command_cases(tmp: Path) -> list[tuple[str, str, list[str], Callable[[], None] | None, str]]:
    """(family, case, argv, setup, expected) — setup prepares files the case needs."""
    run = tmp / "run"
    onnx = tmp / "mlp.onnx"
    hooks = tmp / "hooks"
    foreign = tmp / "foreign"

    def write_hooks() -> None:
        hooks.mkdir(exist_ok=True)
        (hooks / "raising_hook.py").write_text("def load():\n    raise ValueError(\"no column 'label'\")\n")
        (hooks / "broken_hook.py").write_text("def load(:\n    pass\n")
        (hooks / "nan_hook.py").write_text(
            "import numpy as np\ndef load():\n    x = np.ones((60, 4), 'float32'); x[3, 0] = np.nan\n"
            "    return x, np.arange(60) % 2\n")

    def write_foreign() -> None:
        (foreign / "configs").mkdir(parents=True, exist_ok=True)
        (foreign / "configs" / "config.yaml").write_text("db:\n  host: localhost\n")

    def edit_step() -> None:
        from safetensors import safe_open
        from safetensors.numpy import load_file, save

        path = run / "last.safetensors"
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads(fh.metadata()["dualml"])
        meta["step"] = 1
        path.write_bytes(save(load_file(str(path)), metadata={"dualml": json.dumps(meta)}))

    def nan_rows() -> None:
        x = np.zeros((5, 64), np.float32)
        x[[1, 3], 0] = np.nan
        np.save(tmp / "nan.npy", x)

    def read_only() -> None:
        (tmp / "ro").mkdir(exist_ok=True)
        os.chmod(tmp / "ro", 0o500)

    def a_file() -> None:
        (tmp / "afile").write_text("")

    train = ["train", f"backend={BACKEND}", "model=mlp", "trainer.max_steps=1"]
    hook = [*train, "data=hook", f"trainer.run_dir={tmp / 'hookrun'}"]
    root_is_user = os.geteuid() == 0
    return [
        ("types", "trainer.max_steps=abc", [*train, "trainer.max_steps=abc"], None, "error"),
        ("types", "trainer.clip_norm=abc", [*train, "trainer.clip_norm=abc"], None, "error"),
        ("types", "trainer.eval_batch_size=0", [*train, "trainer.eval_batch_size=0"], None, "error"),
        ("types", "trainer.run_dir=[1]", [*train, "trainer.run_dir=[1]"], None, "error"),
        ("types", "data.batch_size=1000000000", [*train, "data.batch_size=1000000000"], None, "error"),
        ("types", "trainer.optimizer.lr=0", [*train, "trainer.optimizer.lr=0"], None, "error"),
        ("types", "non-UTF-8 byte in an override (config)", ["config", "trainer.run_dir=x\udcffy"], None, "error"),
        ("types", "non-UTF-8 byte in an override (train)", [*train, "trainer.run_dir=x\udcffy"], None, "error"),
        ("unknown keys", "data.bogus=1", [*train, "data.bogus=1"], None, "error"),
        ("unknown keys", "export.bogus=1", ["export", f"backend={BACKEND}", "model=mlp", "export.bogus=1"], None,
         "error"),
        ("unknown keys", "compress.bogus_ratio=7", ["compress", f"backend={BACKEND}", "model=cnn",
                                                    "compress.bogus_ratio=7"], None, "error"),
        ("unknown keys", "compress.latency_repeats=0", ["compress", f"backend={BACKEND}", "model=cnn",
                                                        "compress.latency_repeats=0"], None, "error"),
        ("files", "export.data= a file that does not exist", ["export", f"backend={BACKEND}", "model=mlp",
                                                              "export.quantize=static",
                                                              f"export.data={tmp / 'missing.npz'}"], None, "error"),
        ("user code", "data.hook raises", [*hook, "data.hook=raising_hook:load"], write_hooks, "error"),
        ("user code", "data.hook has a syntax error", [*hook, "data.hook=broken_hook:load"], write_hooks, "error"),
        ("data", "data holding NaN", [*hook, "data.hook=nan_hook:load"], write_hooks, "error"),
        ("folders", "run folder whose parent is a file", [*train, f"trainer.run_dir={tmp / 'afile' / 'r'}"], a_file,
         "error"),
        ("folders", "read-only run folder" + (" (root ignores modes: not a refusal)" if root_is_user else ""),
         [*train, f"trainer.run_dir={tmp / 'ro' / 'r'}"], read_only, "fine" if root_is_user else "error"),
        ("folders", "a command run in a folder holding another project's configs/config.yaml",
         ["config", "model=mlp"], write_foreign, "fine"),
        ("folders", "compress.name=../../outside", ["compress", f"backend={BACKEND}", "model=cnn",
                                                    "compress.name=../../outside"], None, "error"),
        ("checkpoints", "checkpoint whose step was edited, resumed",
         [*train, "trainer.max_steps=4", f"trainer.run_dir={run}", "trainer.resume=true"], edit_step, "error"),
        ("checkpoints", "resume with more steps re-plans the cosine schedule",
         ["train", f"backend={BACKEND}", "model=mlp", "trainer.max_steps=6", f"trainer.run_dir={tmp / 'run2'}",
          "trainer.resume=true"], None, "warning"),
        ("predict", "predict given a .safetensors checkpoint",
         ["predict", str(tmp / "run2" / "last.safetensors"), f"input={tmp / 'x.npy'}"], None, "error"),
        ("predict", "predict output= a folder", ["predict", str(onnx), f"input={tmp / 'x.npy'}", f"output={tmp}"],
         None, "fine"),
        ("predict", "predict input with NaN rows", ["predict", str(onnx), f"input={tmp / 'nan.npy'}"], nan_rows,
         "error"),
    ]


def http_case(host: str, port: int, raw: bytes, read_timeout: float = 10.0) -> dict[str, Any]:
    """Send raw bytes, return the status line's code and whether the body parses as JSON."""
    with socket.create_connection((host, port), timeout=read_timeout) as s:
        s.sendall(raw)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    head, body = data.split(b"\r\n\r\n", 1)
                    length = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                    if not length or len(body) >= int(length[0].split(b":")[1]):
                        break
        except TimeoutError:
            pass
    if not data:
        return {"status": None, "json": False, "body": ""}
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        json.loads(body, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        is_json = bool(body)
    except ValueError:
        is_json = False
    return {"status": status, "json": is_json, "body": body[:160].decode("utf-8", "replace")}


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def serve_cases(onnx: Path) -> list[dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "dualml", "serve", str(onnx), "host=127.0.0.1", "port=0",
                             "name=m", "request_timeout_s=2", "max_body_bytes=65536"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
        port = int(port)
        for _ in range(100):  # ready once the session is loaded and warmed
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                break
            time.sleep(0.1)
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/v2/models/m")
        meta = json.loads(conn.getresponse().read())
        name = meta["inputs"][0]["name"]

        def infer(data: str) -> bytes:
            body = f'{{"inputs": [{{"name": "{name}", "shape": [1, 64], "datatype": "FP32", "data": {data}}}]}}'
            return request("POST", "/v2/models/m/infer", body.encode(), {"Content-Type": "application/json"})

        ones = ",".join(["1"] * 63)
        cases = [
            ("a 5,000-digit integer in the body", infer("[" + "9" * 5000 + "," + ones + "]"), 400),
            ("30,000 nested brackets", infer("[" * 30000 + "]" * 30000), 400),
            ("NaN in the inputs", infer("[NaN," + ones + "]"), 400),
            ("1e400 in the inputs", infer("[1e400," + ones + "]"), 400),
            ("a body over max_body_bytes", infer("[" + ",".join(["1.0"] * 20000) + "]"), 413),
            ("HEAD /v2/health/live", request("HEAD", "/v2/health/live"), 200),
            ("PUT /predict", request("PUT", "/predict", b"{}"), 405),
            ("OPTIONS /v2/health/live", request("OPTIONS", "/v2/health/live"), 204),
            ("a 70,000-character URL", request("GET", "/" + "a" * 70000), 414),
            ("200 headers", request("GET", "/v2/health/live", headers={f"X-H{i}": "v" for i in range(200)}), 431),
            ("GET /health (no file path in it)", request("GET", "/health"), 200),
            ("unknown model", request("GET", "/v2/models/nope"), 404),
        ]
        out = []
        for case, raw, want in cases:
            r = http_case(host, port, raw)
            ok = r["status"] == want and (r["json"] or want == 204 or case.startswith("HEAD"))
            if case.startswith("GET /health"):
                ok = ok and str(onnx) not in r["body"]
            out.append({"family": "server", "case": case, "expected": want, **r, "verdict": "ok" if ok else "WRONG"})
        # a body trickled one byte every 0.5 s: the whole request must arrive within request_timeout_s=2
        start = time.perf_counter()
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n")
            status = None
            for _ in range(20):
                try:
                    s.sendall(b"[")
                except OSError:
                    break
                s.settimeout(0.5)
                try:
                    got = s.recv(4096)
                    if got:
                        status = int(got.split(b" ", 2)[1])
                        break
                except TimeoutError:
                    continue
        held = time.perf_counter() - start
        out.append({"family": "server", "case": "a body trickled 1 byte / 0.5 s (request_timeout_s=2)",
                    "expected": 408, "status": status, "json": True, "body": f"answered after {held:.1f} s",
                    "verdict": "ok" if status == 408 and held < 4 else "WRONG"})
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bad_inputs")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        base = ["backend=" + BACKEND, "model=mlp", f"out_dir={tmp}"]
        subprocess.run([sys.executable, "-m", "dualml", "-q", "train", *base, "trainer.max_steps=2",
                        f"trainer.run_dir={tmp / 'run'}"], check=True, cwd=ROOT)
        subprocess.run([sys.executable, "-m", "dualml", "-q", "train", *base, "trainer.max_steps=2",
                        f"trainer.run_dir={tmp / 'run2'}"], check=True, cwd=ROOT)
        subprocess.run([sys.executable, "-m", "dualml", "-q", "export", *base, f"out={tmp / 'mlp.onnx'}"],
                       check=True, cwd=ROOT)
        np.save(tmp / "x.npy", np.zeros((3, 64), np.float32))
        for family, case, argv, setup, expect in command_cases(tmp):
            if setup:
                setup()
            # `python -m` puts the working folder on sys.path: that is where a user's hook module sits
            hook = any(a.startswith("data.hook=") for a in argv)
            cwd = tmp / "foreign" if "configs/config.yaml" in case else tmp / "hooks" if hook else ROOT
            r = dualml(*argv, cwd=cwd)
            results.append({"family": family, "case": case, "expected": expect, **r, "verdict": verdict(r, expect)})
            print(f"{results[-1]['verdict']:9} {case}: rc {r['rc']} {r['said'][:1]}", flush=True)
        for r in serve_cases(tmp / "mlp.onnx"):
            results.append(r)
            print(f"{r['verdict']:9} {r['case']}: HTTP {r['status']} json={r['json']}", flush=True)
    bad = [r for r in results if r["verdict"] != "ok"]
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "bad_inputs.json", json.dumps({"cases": results, "not_ok": len(bad)}, indent=2).encode())
    rows = ["| family | case | outcome | what the user reads |", "|---|---|---|---|"]
    for r in results:
        outcome = f"exit {r['rc']}" if "rc" in r else f"HTTP {r['status']}"
        said = (r.get("said") or [r.get("body", "")])[:1]
        text = (said[0] if said else "").replace("|", "\\|")[:150]
        rows.append(f"| {r['family']} | {r['case']} | {outcome} ({r['verdict']}) | {text} |")
    atomic_write(args.out / "bad_inputs.md", ("\n".join(rows) + "\n").encode())
    print(f"{len(results) - len(bad)}/{len(results)} as documented; report: {args.out / 'bad_inputs.md'}")


if __name__ == "__main__":
    main()
