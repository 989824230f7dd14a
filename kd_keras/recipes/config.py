"""Recipe settings: one dataclass per recipe, the same rules for flags and config files.

Every recipe defines a `Config` dataclass (its fields are its settings, with
their defaults), a `HELP` table (one line per field) and `CHOICES` (the
allowed values of some fields). From them:

- `add_config_arguments(parser, Config, HELP, CHOICES)` adds `--config FILE`
  and one flag per field (`embedding_dim` -> `--embedding-dim`);
- `config_from_args(Config, args)` reads `--config` (YAML or JSON, the same
  names with dashes or underscores) and lets the flags win;
- `check_config(config, CHOICES)` checks each field's type and choices, and
  `check_bounds(config, ...)` their ranges, naming the setting, before any
  expensive step.

Only the standard library and PyYAML are imported here, never TensorFlow, so
`--help` and the checks stay fast.
"""

import argparse
import dataclasses
import json
import os
import typing

import yaml

__all__ = [
    "ConfigError",
    "add_config_arguments",
    "boolean",
    "check_bounds",
    "check_config",
    "config_from_args",
    "flag",
    "load_config_file",
]


class ConfigError(ValueError):
    """A setting (a flag or a config-file entry) has a wrong type or value."""


def flag(name):
    """The command-line flag of a field: `embedding_dim` -> `--embedding-dim`."""
    return "--" + name.replace("_", "-")


def boolean(text):
    """Parses `true/false`, `yes/no`, `on/off`, `1/0` (any case)."""
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _field_type(config_cls, field):
    """The plain type of a field (`int`, `float`, `bool` or `str`), `Optional` unwrapped."""
    hints = typing.get_type_hints(config_cls)
    kind = hints.get(field.name, str)
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def add_config_arguments(parser, config_cls, helps, choices=None):
    """Adds `--config` and one flag per field of `config_cls` to `parser`.

    Flags default to `None` ("not given"), so that a config file can set what
    the command line leaves out.
    """
    choices = choices or {}
    defaults = config_cls()
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    for field in dataclasses.fields(config_cls):
        kind = _field_type(config_cls, field)
        # A yes/no setting also works as a bare switch: `--write-data` is `--write-data true`.
        switch = {"nargs": "?", "const": True} if kind is bool else {}
        text = helps[field.name]
        if "default" not in text:  # a help that names its default keeps it
            text = f"{text} (default: {getattr(defaults, field.name)})"
        parser.add_argument(
            flag(field.name),
            type={int: int, float: float, bool: boolean}.get(kind, str),
            choices=choices.get(field.name),
            default=None,
            help=text,
            **switch,
        )


def load_config_file(path, config_cls):
    """Reads a YAML or JSON file of settings: `{field name: value}`.

    Raises:
        ConfigError: the file is missing, not valid YAML or JSON, not a
            mapping, or names an unknown setting.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    is_json = path.endswith(".json")
    try:
        if is_json:
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except ValueError as e:  # json.JSONDecodeError and yaml.YAMLError are ValueErrors
        raise ConfigError(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {e}") from None
    except Exception as e:  # yaml.YAMLError
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{path}: unknown setting {key!r}; known: {sorted(fields)}")
        out[name] = value
    return out


def config_from_args(config_cls, args):
    """A `config_cls` from `--config` and the flags (flags win), over its `--preset`."""
    values = load_config_file(args.config, config_cls) if getattr(args, "config", None) else {}
    for field in dataclasses.fields(config_cls):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = value
    if values.get("preset") and hasattr(config_cls, "from_preset"):
        return config_cls.from_preset(values.pop("preset"), **values)
    return config_cls(**values)


def check_config(config, choices=None):
    """Checks every field's type (and choices); raises `ConfigError` naming the setting.

    `None` is accepted for any field whose default is `None`. An int is
    accepted where a float is expected; a bool is never taken for a number.
    """
    choices = choices or {}
    defaults = type(config)()
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None and getattr(defaults, field.name) is None:
            continue
        kind = _field_type(type(config), field)
        allowed = (int, float) if kind is float else (kind,)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, allowed):
            raise ConfigError(
                f"{flag(field.name)}: expected {kind.__name__}, got {value!r} "
                f"({type(value).__name__})"
            )
        if field.name in choices and value not in choices[field.name]:
            raise ConfigError(f"{flag(field.name)} must be one of {choices[field.name]}")


def check_bounds(config, at_least=None, positive=(), within=None):
    """Checks numeric ranges; raises `ConfigError` naming the first setting out of range.

    A field whose value is `None` (an optional setting left out) is skipped.

    Args:
        config: the config dataclass.
        at_least: dict `{field: minimum}` (inclusive).
        positive: fields that must be > 0.
        within: dict `{field: (low, high)}` (both inclusive).
    """
    for name, minimum in (at_least or {}).items():
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{flag(name)} must be at least {minimum}; got {value}.")
    for name in positive:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{flag(name)} must be positive; got {value}.")
    for name, (low, high) in (within or {}).items():
        value = getattr(config, name)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"{flag(name)} must be in [{low}, {high}]; got {value}.")
