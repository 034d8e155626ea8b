"""``dualml <command> key=value ...``: every command reads the config, writes a report and prints
where it went. Bad input exits 2 with one line; a failed check exits 1.

One argparse subcommand per file in this folder (``dualml/cli/<command>.py``, each with ``HELP``, ``KEYS``,
``SECTION``, ``cmd_<command>(cfg, overrides)`` and optionally ``GROUP_DEFAULTS``), imported here by name so
the import graph shows what the command line reaches. ``dualml <command> --help`` lists the config keys that
command reads, with their defaults and the comment next to each key in configs/*.yaml as its one-line doc.
"""
from __future__ import annotations

import argparse
import errno
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import GROUPS, config_dir, load_config, load_yaml
from ..errors import DualmlError, UserCodeError, did_you_mean
from ..version import __version__
from . import (
    bench,
    compress,
    curves,
    decide,
    demo,
    ensemble,
    estimate,
    export,
    layout,
    log,
    parity,
    predict,
    serve,
    train,
)
from . import config as config_cmd
from .auto import load

#: command name -> its module, in the order ``dualml --help`` lists them
MODULES: dict[str, ModuleType] = {
    "train": train, "parity": parity, "curves": curves, "demo": demo, "layout": layout, "export": export,
    "predict": predict, "serve": serve, "compress": compress, "bench": bench, "decide": decide,
    "estimate": estimate, "ensemble": ensemble, "config": config_cmd,
}
COMMANDS = {name: m.HELP for name, m in MODULES.items()}
EXAMPLES = ("dualml parity backend=torch parity.against=paddle", "dualml demo model=cnn",
            "dualml layout model=transformer", "dualml export backend=paddle checkpoint=runs/RUN/best out=model.onnx",
            "dualml serve model.onnx port=8000", "dualml train --help")


def command(name: str) -> Callable[[DictConfig, Sequence[str]], int]:
    """The function that runs command ``name``: ``cmd_<name>(cfg, overrides) -> exit status``."""
    return getattr(MODULES[name], f"cmd_{name}")


def usage() -> str:
    lines = ["usage: dualml [--version] [-q | -v] <command> [key=value ...] [--help]", "", "commands:"]
    lines += [f"  {k:8} {v}" for k, v in COMMANDS.items()]
    lines += ["", "examples: " + EXAMPLES[0], *(f"          {e}" for e in EXAMPLES[1:])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --help: keys, defaults, docs
def yaml_comments(text: str) -> dict[str, str]:
    """``dotted key -> the comment on its line`` for a block-style YAML file (what configs/ holds). Why
    parse comments: they are the keys' documentation, kept next to the values they describe."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0].strip()
        if not key.replace("_", "").replace("-", "").isalnum():
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if " #" in stripped:
            out[dotted] = stripped.split(" #", 1)[1].strip().lstrip("#").strip()
    return out


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(node, DictConfig) and len(node):
        return [pair for k, v in node.items() for pair in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, node)]


def keys_help(keys: Sequence[str] | None, groups: Sequence[str] = ()) -> str:
    """The config keys (``key=default  doc``) under ``keys`` (sections, groups or single keys; None: all);
    ``groups``: the command's own group choices (``GROUP_DEFAULTS``, e.g. ``ensemble=soft``)."""
    root = config_dir()
    try:
        cfg = load_config(list(groups))  # never resolves backend=auto: help must not run a benchmark
    except DualmlError as exc:  # a broken config still gets help, with the reason
        return f"config keys: unavailable ({exc})"
    docs = yaml_comments((root / "config.yaml").read_text())
    base = load_yaml(root / "config.yaml")
    chosen = {**dict(base.get("defaults", {})), **dict(g.split("=", 1) for g in groups)}
    rows: list[tuple[str, str, str]] = []
    wanted = list(keys) if keys is not None else [k for k in cfg.keys()]
    for want in wanted:
        if want in GROUPS:
            choices = sorted(p.stem for p in (root / want).glob("*.yaml"))
            doc = docs.get(f"defaults.{want}") or f"configs/{want}/<name>.yaml"
            rows.append((f"{want}={chosen.get(want)}", f"one of: {', '.join(choices)}", doc))
            group_docs = yaml_comments((root / want / f"{chosen.get(want)}.yaml").read_text())
            for k, v in _leaves(cfg[want], ""):
                rows.append((f"{want}.{k}={_show(v)}", "", group_docs.get(k, "")))
            continue
        node = OmegaConf.select(cfg, want)
        for k, v in _leaves(node, want):
            rows.append((f"{k}={_show(v)}", "", docs.get(k, "")))
    width = min(46, max((len(r[0]) for r in rows), default=0))
    lines = [f"config keys (defaults from {root}; override any as key=value):"]
    for key, extra, doc in rows:
        text = "  ".join(x for x in (extra, doc) if x)
        lines.append(f"  {key:{width}}  {text}".rstrip() if len(key) <= width else f"  {key}\n  {'':{width}}  {text}")
    return "\n".join(line.rstrip() for line in lines)


def parser(help_for: str | None = None) -> argparse.ArgumentParser:
    """``dualml [--version] <command> [key=value ...]``; each command has its own ``--help``, whose key
    table is built only for ``help_for`` (it loads the config: not worth doing for every run)."""
    p = argparse.ArgumentParser(prog="dualml", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=usage().split("\n\n", 1)[1])
    p.add_argument("--version", action="version", version=f"dualml {__version__}")
    _verbosity_flags(p)
    sub = p.add_subparsers(dest="command", metavar="<command>")
    for name, module in MODULES.items():
        section = getattr(module, "SECTION", None)
        bare = f"; keys of `{section}` may be given bare, a bare word is {section}.model" if section else ""
        s = sub.add_parser(name, help=module.HELP, description=f"{module.HELP}{bare}",
                           formatter_class=argparse.RawDescriptionHelpFormatter,  # the key table as written
                           epilog=keys_help(module.KEYS or None, getattr(module, "GROUP_DEFAULTS", ()))
                           if name == help_for else None)
        s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
        _verbosity_flags(s)
    return p


def _verbosity_flags(p: argparse.ArgumentParser) -> None:
    """Shown in --help; :func:`main` takes them out of argv itself, wherever they stand."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="results, warnings and errors only (no progress bars, no step-by-step lines)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also the frameworks' own warnings and logs, and tracebacks; every run keeps them "
                        "in dualml.log beside its report")


def _expand(command: str, overrides: list[str]) -> list[str]:
    """``dualml serve m.onnx port=9000`` -> ``serve.model=m.onnx serve.port=9000`` (section keys only)."""
    section = getattr(MODULES[command], "SECTION", None)
    if section is None:
        return overrides
    keys = set(load_yaml(config_dir() / "config.yaml").get(section, {}).keys())
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item and not item.startswith("-"):
            out.append(f"{section}.model={item}")
        elif key in keys:
            out.append(f"{section}.{item}")
        else:
            out.append(item)
    return out


#: file-system refusals that are the environment's answer, not dualml's bug: one line, exit 2
FILE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
               errno.EEXIST, errno.EDQUOT, errno.ENAMETOOLONG, errno.EMFILE, errno.ENOTEMPTY}
#: the verbosity flags, accepted before or after the command (key=value items never look like them)
FLAGS = {"-q": log.QUIET, "--quiet": log.QUIET, "-v": log.VERBOSE, "--verbose": log.VERBOSE}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2 with one ``error:`` line for bad input, 1 for a failed
    check or an unexpected failure, whose traceback only ``-v`` shows)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    levels = {FLAGS[a] for a in argv if a in FLAGS}
    if len(levels) > 1:
        print("error: -q and -v are not allowed together; allowed: one of -q (results and warnings only), "
              "-v (everything, with tracebacks)", file=sys.stderr)
        return 2
    verbosity = levels.pop() if levels else log.verbosity_from_env()
    argv = [a for a in argv if a not in FLAGS]
    with log.session(verbosity, argv) as session:
        try:
            return _run(argv)
        except DualmlError as exc:
            if isinstance(exc, UserCodeError) and exc.__cause__ is not None:  # the user's traceback: log, -v
                trace = "".join(traceback.format_exception(exc.__cause__)).rstrip()
                session.memory.lines.append(trace)
                if verbosity >= log.VERBOSE:
                    print(trace, file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            session.memory.lines.append(f"error: {exc}")
            return 2
        except OSError as exc:
            if exc.errno not in FILE_ERRNOS:
                if verbosity >= log.VERBOSE:
                    raise
                print(session.failure(exc), file=sys.stderr)
                return 1
            # the file system said no (full disk, read-only, a file where a folder belongs): not a bug
            print(f"error: {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr)
            session.memory.lines.append(f"error: {exc!r}")
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:
            if verbosity >= log.VERBOSE:
                raise
            print(session.failure(exc), file=sys.stderr)
            return 1


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name = argv[0]
    if not name.startswith("-") and name not in MODULES:
        print(f"error: command '{name}' is not allowed; allowed: {', '.join(MODULES)}"
              f"{did_you_mean(name, MODULES)}", file=sys.stderr)
        return 2
    p = parser()
    if name in MODULES and any(a in ("-h", "--help") for a in argv[1:]):
        parser(help_for=name).parse_args([name, "--help"])  # prints the command's help and exits 0
    # key=value items are not argparse options: anything else (``-x``) goes to the config loader, whose
    # one-line error says what is allowed, as it always has
    args, unknown = p.parse_known_args(argv)
    if args.command is None:
        print(f"error: argument '{name}' is not allowed; allowed: --version, --help or a command: "
              f"{', '.join(MODULES)}", file=sys.stderr)
        return 2
    # a command's own config group (``GROUP_DEFAULTS``, e.g. ``ensemble=soft``) comes first, so the user's
    # choice wins; such groups stay out of configs/config.yaml's defaults, hence out of every run's config
    # (a run folder's config.yaml and a resume's comparison would otherwise carry them)
    group_defaults = list(getattr(MODULES[args.command], "GROUP_DEFAULTS", ()))
    overrides = _expand(args.command, [*group_defaults, *args.overrides, *unknown])
    cfg = load(overrides)
    return command(args.command)(cfg, overrides)


if __name__ == "__main__":
    sys.exit(main())
