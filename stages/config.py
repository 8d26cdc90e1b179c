"""Config loading: YAML files with `defaults:` inheritance, `key=value` overrides, typed schema.

Layers are merged in this order, later wins:
  1. the schema's dataclass defaults (the one place every default lives),
  2. each entry of the file's `defaults:` list, depth first, in order,
  3. the file's own body,
  4. command-line overrides.

A `defaults:` entry is either a file name (`base` -> `configs/base.yaml`; relative to the configs
directory, or to the including file) or a group choice (`model: tiny` -> `configs/model/tiny.yaml`
placed under the key `model`). On the command line `model=tiny_qwen3` swaps a group choice
(when `configs/model/tiny_qwen3.yaml` exists); anything else is a dotted override whose value is
parsed as YAML (`sft.lr=1e-4`, `model.lora.enabled=true`).

A mapping-typed setting (e.g. `grpo.env_ratios`) is one value: a layer that sets it replaces it
whole rather than adding keys, so `grpo.env_ratios={code: 1}` means code only (a dotted
`model.arch.hidden_size=64` still edits one key).

Every leaf remembers which file and line set it, so a bad value or an unknown key is reported as
`configs/sft.yaml:12: sft.max_step: unknown key (did you mean sft.max_steps?)`, before any work.
"""
from __future__ import annotations

import difflib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config problem, already phrased for the user (file, line, key path, what is wrong)."""


@dataclass
class Layer:
    """One source of values: its name (file path or 'command line') and the leaf -> line map."""

    source: str
    data: dict
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        while line is None and "." in key:  # an unknown nested key: report its nearest parent
            key = key.rsplit(".", 1)[0]
            line = self.lines.get(key)
        return f"{self.source}:{line}" if line else self.source


def _line_map(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Map every dotted key path in a composed YAML node to its 1-based line."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = key_node.start_mark.line + 1
            out.update(_line_map(value_node, path))
    return out


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(io.StringIO(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a config file must be a mapping of keys to values")
    return data, _line_map(node)


def _nest(prefix: str, data: Any, lines: dict[str, int]) -> tuple[dict, dict[str, int]]:
    """Place a group file's content under its group key (`model` -> {'model': {...}})."""
    nested_lines = {f"{prefix}.{k}": v for k, v in lines.items()}
    for part in reversed(prefix.split(".")):
        data = {part: data}
    return data, nested_lines


def _find_config(name: str, relative_to: Path | None) -> Path:
    candidates = []
    for base in ([relative_to] if relative_to else []) + [CONFIG_DIR]:
        for cand in (base / name, base / f"{name}.yaml"):
            candidates.append(cand)
            if cand.is_file():
                return cand
    raise FileNotFoundError(name)


def _group_options(group: str) -> list[str]:
    d = CONFIG_DIR / group.replace(".", "/")
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _compose(path: Path, group_choices: dict[str, str], seen: tuple[Path, ...] = ()) -> list[Layer]:
    """Expand a file's `defaults:` list depth first; return its layers in merge order."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise ConfigError(f"{path}: `defaults:` cycle: {chain}")
    data, lines = _read_yaml(path)
    defaults = data.pop("defaults", [])
    if not isinstance(defaults, list):
        raise ConfigError(f"{path}:{lines.get('defaults', 1)}: `defaults` must be a list")
    layers: list[Layer] = []
    for entry in defaults:
        where = f"{path}:{lines.get('defaults', 1)}"
        if isinstance(entry, str):
            try:
                sub = _find_config(entry, path.parent)
            except FileNotFoundError:
                raise ConfigError(f"{where}: defaults entry '{entry}': no such config file") from None
            layers += _compose(sub, group_choices, seen + (path,))
        elif isinstance(entry, dict) and len(entry) == 1:
            group, option = next(iter(entry.items()))
            option = group_choices.pop(group, option)
            layers.append(_group_layer(group, option, where))
        else:
            raise ConfigError(f"{where}: a defaults entry is a file name or `group: option`, got {entry!r}")
    body_lines = {k: v for k, v in lines.items() if k != "defaults" and not k.startswith("defaults.")}
    layers.append(Layer(str(_display(path)), data, body_lines))
    return layers


def _group_layer(group: str, option: str, where: str) -> Layer:
    options = _group_options(group)
    if option not in options:
        raise ConfigError(f"{where}: {group}={option}: no such option; choose one of {options}")
    gpath = CONFIG_DIR / group.replace(".", "/") / f"{option}.yaml"
    data, lines = _read_yaml(gpath)
    data, lines = _nest(group, data, lines)
    return Layer(str(_display(gpath)), data, lines)


def _display(path: Path) -> Path:
    try:
        return path.relative_to(REPO_ROOT)
    except ValueError:
        return path


def _parse_overrides(overrides: list[str]) -> tuple[dict[str, str], list[Layer]]:
    """Split CLI `key=value` items into group choices and dotted value overrides."""
    choices: dict[str, str] = {}
    layers: list[Layer] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: '{item}': overrides are key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"command line: '{item}': empty key")
        options = _group_options(key)
        if options and not raw.lstrip().startswith("{"):  # `model=tiny`: a group choice
            if raw not in options:
                raise ConfigError(f"command line '{item}': {key}={raw}: no such option; "
                                  f"choose one of {options}")
            choices[key] = raw
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw  # not YAML: keep the literal string
        data: Any = value
        for part in reversed(key.split(".")):
            data = {part: data}
        layers.append(Layer(f"command line '{item}'", data, {key: 0}))
    return choices, layers


def compose_layers(config_file: str | Path | None, overrides: list[str] | None = None) -> list[Layer]:
    """All layers for a config file plus overrides, in merge order (schema defaults not included)."""
    choices, cli_layers = _parse_overrides(list(overrides or []))
    layers: list[Layer] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            try:
                path = _find_config(str(config_file), None)
            except FileNotFoundError:
                raise ConfigError(f"{config_file}: config file not found") from None
        layers = _compose(path, choices)
    for group, option in choices.items():  # group choices not already in a defaults list
        layers.append(_group_layer(group, option, "command line"))
    return layers + cli_layers


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.append(path)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
                out += _all_keys(node, path)
    return out


def _explain(err: OmegaConfBaseException, layer: Layer, cfg: DictConfig) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    where = layer.where(key)
    msg = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError) or "not in" in msg:
        close = difflib.get_close_matches(key, _all_keys(cfg), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return ConfigError(f"{where}: {key}: unknown key{hint}")
    if isinstance(err, ValidationError):
        return ConfigError(f"{where}: {key}: wrong type: {msg}")
    return ConfigError(f"{where}: {key}: {msg}")


def _clear_replaced_mappings(cfg: DictConfig, layer: Layer, data: dict | None = None, prefix: str = "") -> None:
    """Empty each plain mapping (not a dataclass section) that the layer sets as a whole, so the
    merge replaces it; a dotted override into it (`model.arch.hidden_size=64`) still edits one key."""
    for key, value in (layer.data if data is None else data).items():
        node = cfg._get_node(key) if key in cfg else None
        path = f"{prefix}.{key}" if prefix else str(key)
        if not isinstance(node, DictConfig) or node._is_none() or not isinstance(value, dict):
            continue
        if OmegaConf.get_type(node) is not dict:
            _clear_replaced_mappings(node, layer, value, path)
        elif path in layer.lines:
            for k in list(node.keys()):
                del node[k]


def load_config(schema: type, config_file: str | Path | None = None,
                overrides: list[str] | None = None) -> Any:
    """Compose, merge and validate a config against a dataclass schema; fail before any work.

    Returns an instance of `schema` holding plain Python values (components never see OmegaConf).
    """
    cfg = OmegaConf.structured(schema)
    for layer in compose_layers(config_file, overrides):
        try:
            _clear_replaced_mappings(cfg, layer)
            cfg = OmegaConf.merge(cfg, OmegaConf.create(layer.data))
        except OmegaConfBaseException as err:
            raise _explain(err, layer, cfg) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        src = str(config_file) if config_file else "the config"
        raise ConfigError(f"{src}: required value(s) not set: {', '.join(missing)} "
                          f"(set them in the YAML or as key=value on the command line)")
    try:
        OmegaConf.resolve(cfg)  # ${...} interpolations fail here rather than mid-run
    except OmegaConfBaseException as err:
        raise ConfigError(f"{config_file}: {getattr(err, 'full_key', '')}: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_object(cfg)


def to_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML text: what gets saved beside every run."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True, sort_keys=False)


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def parse_cli(argv: list[str], default_config: str) -> tuple[str, list[str]]:
    """`[--config FILE] key=value ...` -> (config file, overrides). Kept tiny on purpose."""
    config, rest, it = default_config, [], iter(argv)
    for arg in it:
        if arg in ("--config", "-c"):
            config = next(it, None)
            if config is None:
                raise ConfigError("command line: --config needs a file")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest
