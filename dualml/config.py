"""Configs are the interface: ``configs/config.yaml`` plus one file per group, overridden by
``key=value`` dotlist arguments. Unknown keys and values outside their allowed set are rejected
up front with one line naming the key, the value, what is allowed and the nearest spelling."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, did_you_mean, not_allowed

GROUPS = ("model", "data", "trainer", "compress", "decision", "ensemble")


def config_dir() -> Path:
    """$DUALML_CONFIG_DIR, else ./configs, else the configs/ folder of this source tree, else the copy
    an installed package carries (``dualml/_configs``, see setup.py)."""
    pkg = Path(__file__).resolve().parent
    explicit = os.environ.get("DUALML_CONFIG_DIR")
    if explicit:
        if not (Path(explicit) / "config.yaml").is_file():
            raise ConfigError(f"DUALML_CONFIG_DIR={explicit} is not allowed; it holds no config.yaml")
        return Path(explicit)
    for candidate in ("configs", pkg.parent / "configs", pkg / "_configs"):
        if (Path(candidate) / "config.yaml").is_file() and _is_dualml_dir(Path(candidate)):
            return Path(candidate)
    raise ConfigError("no configs/config.yaml found; run from the repository or set DUALML_CONFIG_DIR")


def _is_dualml_dir(root: Path) -> bool:
    """Whether ``root`` is a dualml config folder, not another project's ``configs/`` (Hydra's default
    layout uses the same names) met in the working directory: it must have dualml's group folders."""
    return all((root / group).is_dir() for group in ("model", "data", "trainer"))


def load_yaml(path: Path, what: str = "a mapping of config keys") -> DictConfig:
    """One config file as a mapping; a malformed file, or a list or scalar where a mapping belongs, is a
    one-line ConfigError naming the file (OmegaConf's own errors are multi-line parser dumps)."""
    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} holds a {type(node).__name__.replace('Config', '').lower() or 'value'}; "
                          f"allowed: {what}")
    return node


def _choices(root: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (root / group).glob("*.yaml"))


def _parse(overrides: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"argument '{item}' is not allowed; arguments are key=value (e.g. backend=paddle)")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:  # bytes the locale could not decode arrive as surrogates (PEP 383)
            raise ConfigError(f"argument {ascii(item)} is not allowed; it holds bytes that are not UTF-8 "
                              "(allowed: UTF-8 text)") from None
        key, value = item.split("=", 1)
        out.append((key.strip(), value))
    return out


#: sections whose keys depend on a chosen kind (validated by their own module, e.g. schedules)
OPEN_SECTIONS = ("trainer.schedule", "data", "compress", "ensemble")


def _check_key(cfg: DictConfig, key: str) -> Any:
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig):
            if part not in node and ".".join(parts[:i]) in OPEN_SECTIONS and i == len(parts) - 1:
                return None
            if part not in node:
                where = ".".join(parts[:i])
                allowed = [f"{where}.{k}" if where else str(k) for k in node.keys()]
                raise ConfigError(f"unknown config key '{key}'{did_you_mean('.'.join(parts[: i + 1]), allowed)}; "
                                  f"allowed{' under ' + where if where else ''}: {', '.join(allowed)}")
            node = node[part]
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:i])}' has no field '{part}'")
    return node


def _check_type(key: str, old: Any, new: Any) -> None:
    if old is None or new is None:
        return
    number = (int, float)
    ok = (isinstance(old, bool) and isinstance(new, bool)) or (
        not isinstance(old, bool) and isinstance(old, number) and isinstance(new, number)
        and not isinstance(new, bool) and not (isinstance(old, int) and isinstance(new, float))) or (
        isinstance(old, str) and isinstance(new, str)) or (
        isinstance(old, (list, ListConfig)) and isinstance(new, list))
    if not ok:
        kind = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
            type(old), "a list" if isinstance(old, (list, ListConfig)) else type(old).__name__)
        raise ConfigError(f"{key}={new!r} is not allowed; expected {kind}")


def load_config(overrides: Sequence[str] = (), root: str | os.PathLike | None = None) -> DictConfig:
    """The resolved config: root file, selected group files, then overrides, validated. ``backend=auto``
    stays ``auto`` here: the command line resolves it (``dualml.cli.auto``) before a command runs, because
    resolving may run a benchmark, which a config loader must not."""
    root = Path(root) if root else config_dir()
    base = load_yaml(root / "config.yaml")
    defaults = base.pop("defaults", {})
    if not isinstance(defaults, DictConfig):
        raise ConfigError(f"{root / 'config.yaml'}: defaults={defaults!r} is not allowed; allowed: a mapping "
                          f"group: file, e.g. model: mlp")
    defaults = dict(defaults)
    pairs = _parse(overrides)
    rest = []
    for key, value in pairs:
        if key in GROUPS:
            defaults[key] = value
        else:
            rest.append((key, value))
    for group, name in defaults.items():
        path = root / group / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(not_allowed(group, name, _choices(root, group)))
        base[group] = load_yaml(path)
    _apply_model_recipe(base, root / "model" / f"{defaults.get('model')}.yaml")
    for key, value in rest:
        old = _check_key(base, key)
        try:
            new = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            new = value
        if isinstance(new, str):  # YAML 1.1 reads 1e-4 as a string; a number is meant
            try:
                new = float(new)
            except ValueError:
                pass
        expected = NULL_DEFAULT_TYPES.get(key)
        if (expected is str or isinstance(old, str)) and isinstance(new, (int, float)) and not isinstance(new, bool):
            new = value  # trainer.run_dir=5 names a folder "5": a string key keeps the text as typed
        _check_type(key, OmegaConf.to_object(old) if isinstance(old, (DictConfig, ListConfig)) else old, new)
        OmegaConf.update(base, key, new, merge=False)
    validate(base)
    return base


def leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) for every non-mapping value below ``node``; lists are values. What turns a
    settings block (a model's trainer recipe, an ensemble member's ``trainer:``) into key=value overrides."""
    if not isinstance(node, Mapping):
        return [(prefix, node)]
    return [pair for k, v in node.items() for pair in leaves(v, f"{prefix}.{k}")]


def _apply_model_recipe(base: DictConfig, path: Path) -> None:
    """A model file may carry a ``trainer:`` block: the settings that model trains well with (the cnn's
    longer run, for one). Why in the model file: ``dualml train model=cnn`` must give the model its
    recipe without the user naming a trainer file, while the shared trainer defaults stay what the other
    models (and the tests built on them) were tuned with. The block is taken out of ``model`` (it is
    not a constructor argument) and merged key by key over the trainer group, before the command line,
    so ``trainer.epochs=5`` still wins. Each key is validated like a command-line override: an unknown
    key or a wrong type is a ConfigError naming the model file."""
    if not isinstance(base.get("model"), DictConfig) or "trainer" not in base.model:
        return
    block = base.model.pop("trainer")
    if block is None:  # an empty `trainer:` block: nothing to merge
        return
    if not isinstance(block, DictConfig):
        raise ConfigError(f"{path}: trainer={block!r} is not allowed; expected a mapping of trainer settings")
    recipe = OmegaConf.to_container(block, resolve=True)
    for key, value in leaves(recipe, "trainer"):
        try:
            old = _check_key(base, key)
            _check_type(key, OmegaConf.to_object(old) if isinstance(old, (DictConfig, ListConfig)) else old, value)
        except ConfigError as exc:
            raise ConfigError(f"{path} (the model's trainer recipe): {exc}") from None
        OmegaConf.update(base, key, value, merge=False)


#: the type of each key whose shipped default is null, which a default cannot tell (checked in validate)
NULL_DEFAULT_TYPES: dict[str, type] = {
    "trainer.max_steps": int, "trainer.clip_norm": float, "trainer.amp": str, "trainer.run_dir": str,
    "parity.only": str, "export.checkpoint": str, "export.out": str, "export.opset": int, "predict.model": str,
    "predict.input": str, "predict.output": str, "serve.model": str, "serve.name": str, "serve.token": str,
    "decide.bench": str, "estimate.samples": int, "compress.checkpoint": str, "trainer.init_from": str,
}
#: numeric keys and their smallest allowed value: a zero batch or step count fails deep inside a loop
#: (``range() arg 3 must not be zero``) instead of here with the key's name. A float bound marks a key that
#: takes any number; estimate.margin has its own range check in the estimate command.
MINIMUMS: dict[str, float] = {
    "seed": 0, "trainer.epochs": 0, "trainer.max_steps": 1, "trainer.accumulate": 1, "trainer.eval_batch_size": 1,
    "trainer.checkpoint_every": 0, "trainer.devices": 1, "trainer.early_stopping.patience": 0,
    "trainer.optimizer.lr": 0.0, "trainer.optimizer.weight_decay": 0.0, "trainer.optimizer.momentum": 0.0,
    "trainer.optimizer.eps": 0.0, "trainer.schedule.warmup_steps": 0, "trainer.clip_norm": 0.0,
    "data.batch_size": 1, "export.verify_batch": 1, "export.calib_batches": 1, "export.opset": 7,
    "bench.repeats": 1, "bench.warmup": 0, "bench.min_seconds": 0.0, "bench.threads": 1, "bench.calib_batches": 1,
    "estimate.steps": 1, "estimate.samples": 1,
}
#: of those, the ones that must be strictly greater than their minimum
EXCLUSIVE = ("trainer.optimizer.lr", "trainer.optimizer.eps", "trainer.clip_norm")
_KIND = {int: "an integer", float: "a number", str: "a string"}


def _check_typed_nulls(cfg: DictConfig) -> None:
    for key, kind in NULL_DEFAULT_TYPES.items():
        value = OmegaConf.select(cfg, key)
        ok = value is None or (isinstance(value, kind) and not isinstance(value, bool)) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: null or {_KIND[kind]}")


def _check_minimums(cfg: DictConfig) -> None:
    for key, low in MINIMUMS.items():
        value = OmegaConf.select(cfg, key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent, null or not a number: the type checks speak for those
        if value < low or (key in EXCLUSIVE and value <= low) or value != value:
            kind = "a number" if isinstance(low, float) else "an integer"
            bound = f"> {low:g}" if key in EXCLUSIVE else f">= {low:g}"
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {kind} {bound}")


#: keys whose value becomes a folder name under ``out_dir`` (``<out_dir>/bench/<model.name>/``,
#: ``<out_dir>/compress/<compress.name>-<model.name>-<backend>/``); other paths (run_dir, out=, output=) are
#: paths the user gives on purpose
FILE_NAME_KEYS = ("model.name", "compress.name", "ensemble.name")
#: what such a value may hold: one path component, no ``..``, nothing a shell or another OS trips on
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_file_name(key: str, value: Any) -> None:
    """Refuse a value that would not stay one plain name inside ``out_dir`` (``compress.name=../../x``
    wrote outside it): a ConfigError naming the key and what is allowed."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value) and ".." not in value:
        return
    raise ConfigError(f"{key}={value!r} is not allowed; it becomes a folder or file name under out_dir; allowed: "
                      "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..' "
                      "(no path separators, no absolute path)")


def validate(cfg: DictConfig) -> None:
    from .backend import available_backends

    _check_typed_nulls(cfg)
    _check_minimums(cfg)
    for key in FILE_NAME_KEYS:
        if isinstance(cfg.get(key.split(".")[0]), DictConfig):  # a config without that group names no folder
            check_file_name(key, OmegaConf.select(cfg, key))

    # only `backend` can be auto: parity.against names the second backend explicitly
    for key, allowed in (("backend", [*available_backends(), "auto"]), ("parity.against", available_backends())):
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(not_allowed(key, value, allowed))
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} is not allowed; allowed: an integer >= 0")
    trainer = OmegaConf.select(cfg, "trainer")
    if isinstance(trainer, DictConfig):  # syntax and ranges only; whether a GPU exists is the Trainer's question
        from .devices import parse_device, parse_nodes

        parse_device(trainer.get("device", "auto"))
        parse_nodes(trainer)
    parity = OmegaConf.select(cfg, "parity")
    if isinstance(parity, DictConfig):
        from .devices import parse_device

        parse_device(parity.get("device", "cpu"), key="parity.device")


def model_params(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    params = OmegaConf.to_container(cfg.model, resolve=True)
    return params.pop("name"), params
