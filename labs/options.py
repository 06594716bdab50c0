"""Method options, from the command line or from Python, into a technique's config dataclass.

`labs finetune --method lora --option r=16 --option target_modules=q_proj,v_proj` hands the
technique a dict of strings. `config_from_options(LoRAConfig, options)` turns it into a config,
reading each value by the type of its dataclass field:

    int      a whole number: "8", "-1"
    float    any number: "0.1", "1e-3", "16"
    bool     true/false, yes/no, 1/0 (any case); anything else is an error, never False
    str      as given
    tuple    a comma-separated list: "q_proj,v_proj" -> ("q_proj", "v_proj")
    X | None "none" (any case) -> None, else read as X

Values that are not strings (from Python code) pass through unchanged; the config's own checks
judge them. Every error names the option, the bad value and what is accepted.
"""
from __future__ import annotations

import types
import typing
from dataclasses import fields

TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")
DESCRIBE = {int: "a whole number, e.g. 8", float: "a number, e.g. 0.1 or 1e-3",
            bool: "true or false (also yes/no, 1/0)", str: "any text"}


def method_label(config_class: type) -> str:
    """The method a config class belongs to ("lora"), from the registry, for messages."""
    from labs.methods import method_for_module
    try:
        return method_for_module(config_class.__module__).name
    except ValueError:  # a config outside the registry (a test's own dataclass)
        return config_class.__name__


def parse_options(config_class: type, options: dict | None) -> dict:
    """`options` checked against the fields of `config_class`, command-line strings converted."""
    options = dict(options or {})
    hints = typing.get_type_hints(config_class)
    accepted = [f.name for f in fields(config_class)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {method_label(config_class)} option(s) {', '.join(map(repr, unknown))}; "
                         f"{config_class.__name__} accepts: {', '.join(accepted)}")
    return {name: _read(config_class, name, value, hints[name]) if isinstance(value, str) else value
            for name, value in options.items()}


def config_from_options(config_class: type, options: dict | None, **defaults):
    """`config_class(**defaults, **options)` with `options` read by parse_options."""
    return config_class(**{**defaults, **parse_options(config_class, options)})


def _read(config_class: type, name: str, text: str, hint):
    try:
        return _cast(text.strip(), hint)
    except ValueError:
        raise ValueError(f"{method_label(config_class)} option {name}={text!r} is not valid: "
                         f"{name} takes {_describe(hint)}") from None


def _optional(hint) -> tuple[object, bool]:
    """(the type inside `X | None`, True), or (hint, False) for a plain type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and len(typing.get_args(hint)) == 2:
            return inner[0], True
    return hint, False


def _cast(text: str, hint):
    hint, optional = _optional(hint)
    if optional and text.lower() == "none":
        return None
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else str
        return tuple(_cast(part.strip(), item) for part in text.split(",") if part.strip())
    if hint is bool:
        if text.lower() not in TRUE + FALSE:
            raise ValueError(text)
        return text.lower() in TRUE
    if hint is int:
        return int(text)          # "8.5", "eight" and "" raise ValueError
    if hint is float:
        return float(text)
    if hint is str:
        return text
    raise TypeError(f"options of type {hint} cannot be read from the command line")


def _describe(hint) -> str:
    hint, optional = _optional(hint)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0] if typing.get_args(hint) else str
        text = f"a comma-separated list, each {DESCRIBE.get(item, item)}"
    else:
        text = DESCRIBE.get(hint, str(hint))
    return text + (", or none" if optional else "")
