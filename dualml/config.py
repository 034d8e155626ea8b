"""Configs are the interface: ``configs/config.yaml`` plus one file per group, overridden by
``key=value`` dotlist arguments. Unknown keys and values outside their allowed set are rejected
up front with one line naming the key, the value, what is allowed and the nearest spelling."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, did_you_mean, not_allowed

GROUPS = ("model", "data", "trainer", "compress", "decision")


def config_dir() -> Path:
    """$DUALML_CONFIG_DIR, else ./configs, else the configs/ folder of this source tree, else the copy
    an installed package carries (``dualml/_configs``, see setup.py)."""
    pkg = Path(__file__).resolve().parent
    for candidate in (os.environ.get("DUALML_CONFIG_DIR"), "configs", pkg.parent / "configs", pkg / "_configs"):
        if candidate and (Path(candidate) / "config.yaml").is_file():
            return Path(candidate)
    raise ConfigError("no configs/config.yaml found; run from the repository or set DUALML_CONFIG_DIR")


def _choices(root: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (root / group).glob("*.yaml"))


def _parse(overrides: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"argument '{item}' is not allowed; arguments are key=value (e.g. backend=paddle)")
        key, value = item.split("=", 1)
        out.append((key.strip(), value))
    return out


#: sections whose keys depend on a chosen kind (validated by their own module, e.g. schedules)
OPEN_SECTIONS = ("trainer.schedule", "data", "compress")


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
    base = OmegaConf.load(root / "config.yaml")
    defaults = dict(base.pop("defaults", {}))
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
        base[group] = OmegaConf.load(path)
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
        _check_type(key, OmegaConf.to_object(old) if isinstance(old, (DictConfig, ListConfig)) else old, new)
        OmegaConf.update(base, key, new, merge=False)
    validate(base)
    return base


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, value) for every non-mapping value below ``node``; lists are values."""
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [pair for k, v in node.items() for pair in _leaves(v, f"{prefix}.{k}")]


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
    for key, value in _leaves(recipe, "trainer"):
        try:
            old = _check_key(base, key)
            _check_type(key, OmegaConf.to_object(old) if isinstance(old, (DictConfig, ListConfig)) else old, value)
        except ConfigError as exc:
            raise ConfigError(f"{path} (the model's trainer recipe): {exc}") from None
        OmegaConf.update(base, key, value, merge=False)


def validate(cfg: DictConfig) -> None:
    from .backend import available_backends

    # only `backend` can be auto: parity.against names the second backend explicitly
    for key, allowed in (("backend", [*available_backends(), "auto"]), ("parity.against", available_backends())):
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(not_allowed(key, value, allowed))
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} is not allowed; allowed: an integer >= 0")


def model_params(cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    params = OmegaConf.to_container(cfg.model, resolve=True)
    return params.pop("name"), params
