"""Bad input from issue #14: each family ends in one line naming the key, value or file and what is
allowed (exit 2 from the command line), never a traceback or a silent acceptance."""
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualml.cli.main import MODULES, main
from dualml.compress.pipeline import parse_steps
from dualml.config import config_dir, load_config
from dualml.errors import ConfigError, UserCodeError
from dualml.testing import selected_backends
from dualml.train.data import from_arrays, load_dataset
from dualml.train.trainer import Trainer
from dualml.zoo import create_model

BACKEND = selected_backends()[0]


@pytest.mark.parametrize("override, words", [
    ("trainer.max_steps=abc", "trainer.max_steps='abc' is not allowed; allowed: null or an integer"),
    ("trainer.clip_norm=abc", "trainer.clip_norm='abc' is not allowed; allowed: null or a number"),
    ("trainer.clip_norm=0", "trainer.clip_norm=0 is not allowed; allowed: a number > 0"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 is not allowed; allowed: an integer >= 1"),
    ("trainer.max_steps=0", "trainer.max_steps=0 is not allowed; allowed: an integer >= 1"),
    ("data.batch_size=-3", "data.batch_size=-3 is not allowed; allowed: an integer >= 1"),
    ("trainer.optimizer.lr=0", "trainer.optimizer.lr=0 is not allowed; allowed: a number > 0"),
    ("export.opset=abc", "export.opset='abc' is not allowed; allowed: null or an integer"),
    ("trainer.run_dir=[1]", "trainer.run_dir=[1] is not allowed; allowed: null or a string"),
])
def test_wrong_types_and_out_of_range_numbers_are_named(override, words):
    with pytest.raises(ConfigError) as e:
        load_config([override])
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_number_given_to_a_string_key_is_the_text_typed():
    assert load_config(["trainer.run_dir=5"]).trainer.run_dir == "5"  # a folder named 5, not a TypeError


def test_bytes_that_are_not_utf8_are_refused_in_one_printable_line():
    with pytest.raises(ConfigError, match=r"holds bytes that are not UTF-8") as e:
        load_config(["trainer.run_dir=x\udcffy"])  # how Python hands over an undecodable argv byte
    str(e.value).encode("utf-8")  # the message itself prints on any terminal


def _config_copy(tmp_path: Path) -> Path:
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    return root


@pytest.mark.parametrize("text, words", [
    ("backend: [torch\nseed: 0\n", "is not valid YAML (line"),
    ("- backend\n- seed\n", "holds a list; allowed: a mapping of config keys"),
    ("defaults: [mlp]\nbackend: torch\n", "defaults=[" ),
])
def test_a_malformed_config_file_is_named(tmp_path, text, words):
    root = _config_copy(tmp_path)
    (root / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config([], root=root)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_group_file_holding_a_list_is_named(tmp_path):
    root = _config_copy(tmp_path)
    (root / "trainer" / "default.yaml").write_text("- epochs\n")
    with pytest.raises(ConfigError, match=r"trainer/default.yaml holds a list"):
        load_config([], root=root)


def test_another_projects_configs_folder_in_the_working_directory_is_not_read(tmp_path, monkeypatch):
    """Hydra's default layout is configs/config.yaml too: dualml must not load a stranger's file."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.yaml").write_text("db:\n  host: localhost\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DUALML_CONFIG_DIR", raising=False)
    assert config_dir() != Path("configs") and load_config([]).backend in ("torch", "paddle", "auto")


def test_a_config_dir_that_does_not_hold_a_config_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALML_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"DUALML_CONFIG_DIR=.* holds no config.yaml"):
        config_dir()


# ----------------------------------------------------------------------------- the user's code
@pytest.fixture()
def hooks(tmp_path, monkeypatch):
    (tmp_path / "raising_hook.py").write_text("def load():\n    raise ValueError(\"no column 'label'\")\n")
    (tmp_path / "broken_hook.py").write_text("def load(:\n    pass\n")
    (tmp_path / "nan_hook.py").write_text(
        "import numpy as np\ndef load():\n    x = np.ones((50, 4), 'float32'); x[3, 0] = np.nan\n"
        "    return x, np.arange(50) % 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _hook_data(hook: str) -> dict:
    return {"name": "hook", "hook": hook, "val_fraction": 0.1, "test_fraction": 0.2, "batch_size": 8}


def test_a_hook_that_raises_is_named_with_its_exception_and_line(hooks):
    with pytest.raises(UserCodeError) as e:
        load_dataset(_hook_data("raising_hook:load"))
    msg = str(e.value)
    assert msg.startswith("data.hook=raising_hook:load raised ValueError: no column 'label' at ")
    assert f"{hooks / 'raising_hook.py'}:2" in msg and isinstance(e.value.__cause__, ValueError)


def test_a_hook_with_a_syntax_error_is_named_with_its_file(hooks):
    with pytest.raises(UserCodeError, match=r"raised SyntaxError: .* at .*broken_hook.py:1"):
        load_dataset(_hook_data("broken_hook:load"))


def test_the_command_line_shows_the_hooks_traceback_only_with_v(hooks, capsys):
    args = ["model=mlp", "data=hook", "data.hook=raising_hook:load", "trainer.max_steps=1"]
    assert main(["train", *args, f"trainer.run_dir={hooks / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["-v", "train", *args, f"trainer.run_dir={hooks / 'r2'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("no column' in err


def test_data_holding_nan_is_refused_with_its_rows(hooks):
    with pytest.raises(ConfigError, match=r"1 sample\(s\) hold NaN or inf \(rows 3,"):
        load_dataset(_hook_data("nan_hook:load"))
    x = np.zeros((40, 3))
    x[[5, 9]] = np.inf
    with pytest.raises(ConfigError, match=r"2 sample\(s\) hold NaN or inf \(rows 5, 9,"):
        from_arrays(x, np.arange(40) % 2)


# ----------------------------------------------------------------------------- training and files
def test_a_batch_larger_than_the_train_split_is_named():
    with pytest.raises(ConfigError, match=r"data.batch_size=1000000000 is not allowed with a train split of \d+ "
                                          r"samples and trainer.accumulate=1; allowed: data.batch_size <= \d+"):
        Trainer(load_config([f"backend={BACKEND}", "data.batch_size=1000000000"]), write=False)


def test_a_run_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "afile").write_text("")
    cfg = load_config([f"backend={BACKEND}", "trainer.max_steps=1", f"trainer.run_dir={tmp_path / 'afile' / 'run'}"])
    with pytest.raises(ConfigError, match=r"trainer.run_dir=.*afile/run is not allowed; it cannot be created"):
        Trainer(cfg, progress=False).fit()


def test_the_file_system_saying_no_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    def full(cfg, overrides):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
    monkeypatch.setattr(MODULES["layout"], "cmd_layout", full)
    assert main(["layout"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'x.json'}: No space left on device\n"


@pytest.mark.parametrize("override, words", [
    ("compress.bogus_ratio=7", "unknown config key 'compress.bogus_ratio'"),
    ("compress.latency_repeats=0", "compress.latency_repeats=0 is not allowed; allowed: an integer >= 1"),
])
def test_compress_keys_are_checked(override, words):
    cfg = load_config(["model=cnn", override])
    with pytest.raises(ConfigError, match=words):
        parse_steps(cfg.compress, create_model("cnn"), BACKEND)


def test_the_installed_command_refuses_bad_input_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dualml", "train", "trainer.max_steps=abc"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error: trainer.max_steps='abc' is not allowed")
    assert "Traceback" not in out.stderr


def test_a_custom_layer_whose_builder_raises_names_the_layer_and_the_builder():
    import dualml
    from dualml import nn
    from dualml.backend import _IMPLS

    class Gate(nn.Layer):
        def params(self):
            return {}

    def build_gate(spec):
        raise KeyError("n_units")

    dualml.register_layer(Gate, BACKEND, build=build_gate)
    try:
        with pytest.raises(UserCodeError) as e:
            dualml.build(nn.Sequential(Gate()), BACKEND)
    finally:
        _IMPLS.pop((BACKEND, Gate), None)
    msg = str(e.value)
    assert f"the {BACKEND} builder of layer Gate" in msg and "build_gate" in msg and "raised KeyError" in msg
    assert "test_hardening_input.py:" in msg
