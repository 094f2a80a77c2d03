"""The machinery of typed, self-validating configuration dataclasses (the sections live in :mod:`fedlib.config`).

Every config validates itself on construction and raises :class:`ConfigError` naming the field,
the value and what is allowed. Configs round-trip through dicts, JSON and YAML; unknown keys are
errors (a typo must not be silently ignored). Every field carries a help text (:func:`setting`), which the
command line's ``--help`` (:mod:`fedlib.cli`) and ``docs/config.md`` (:func:`describe`) show.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "Config", "check", "setting", "help_of", "describe", "yaml_load"]


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field, the value and what is allowed."""


def check(ok: bool, owner: str, name: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` ``"<owner>.<name>=<value!r>: <allowed>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{owner}.{name}={value!r} is invalid: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans and exponents: only true/false are booleans, ``1e-9`` is a float.

    (YAML 1.1 reads ``off``, the layer role, as False, and ``no`` too.)"""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)  # 1e-9 (no dot) is a float, as in YAML 1.2


def yaml_load(text: str) -> Any:
    """Parse YAML with only true/false as booleans (``off``, ``on``, ``yes``, ``no`` stay strings)."""
    return yaml.load(text, Loader=_Loader)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text (``default`` or ``factory`` for mutable defaults)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


class Config:
    """Mixin for dataclass configs: type checks, ``validate()``, dict/JSON/YAML round trips."""

    def __post_init__(self) -> None:
        self._check_types()
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass

    def _check_types(self) -> None:
        owner = getattr(type(self), "SECTION", type(self).__name__)  # the name a user writes (e.g. "train")
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = hints[f.name]
            if not _matches(value, want):
                check(False, owner, f.name, value, f"expected {_type_name(want)}")

    # ---- round trips -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in data.items():
            sub = _dataclass_in(hints[key])
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value)
            elif isinstance(value, list) and _wants_tuple(hints[key]):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Config":
        text = _read(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{cls.__name__}: not valid JSON ({err})") from err
        return cls.from_dict(data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, text_or_path: str | Path) -> "Config":
        try:
            data = yaml_load(_read(text_or_path))
        except yaml.YAMLError as err:
            raise ConfigError(f"{cls.__name__}: not valid YAML ({err})") from err
        return cls.from_dict(data or {})

    def replace(self, **changes: Any) -> "Config":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _read(text_or_path: str | Path) -> str:
    if isinstance(text_or_path, Path) or (
        isinstance(text_or_path, str) and "\n" not in text_or_path and text_or_path.endswith((".json", ".yaml", ".yml"))
    ):
        path = Path(text_or_path)
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {str(path)!r}: {err}") from err
    return str(text_or_path)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _dataclass_in(tp: Any) -> type | None:
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def _wants_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return _is_num(value)
    if tp is int:
        return _is_int(value)
    if tp is bool:
        return isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def type_name(tp: Any) -> str:
    """A short human name of a field type (``int``, ``one of 'a', 'b'``, ``float or None``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) if a is not type(None) else "None" for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "list of " + type_name(typing.get_args(tp)[0])
    return _type_name(tp)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """``(dotted name, type, default, help)`` for every field of config class ``cls``, sections expanded."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            rows += describe(sub, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, type_name(hints[f.name]), _to_plain(default), help_of(f)))
    return rows


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
