"""labs.options: command-line option strings into a technique's config, one strict reading for all."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from labs.options import config_from_options, parse_options


@dataclass(frozen=True)
class Config:
    r: int = 8                                     # a whole number
    alpha: float = 16                              # any number
    use_rslora: bool = False                       # true/false only
    name: str = "x"                                # text as given
    target_modules: tuple[str, ...] | None = None  # a comma list, or none
    sizes: tuple[int, ...] = ()                    # a comma list of whole numbers


def test_strings_are_read_by_the_field_type():
    config = config_from_options(Config, {"r": "4", "alpha": "1e-3", "use_rslora": "YES", "name": "q,v",
                                          "target_modules": "q_proj, v_proj", "sizes": "1,2"})
    assert config == Config(r=4, alpha=1e-3, use_rslora=True, name="q,v",
                            target_modules=("q_proj", "v_proj"), sizes=(1, 2))
    assert config_from_options(Config, {"target_modules": "None"}).target_modules is None
    for text, value in (("true", True), ("1", True), ("False", False), ("no", False), ("0", False)):
        assert config_from_options(Config, {"use_rslora": text}).use_rslora is value


@pytest.mark.parametrize("key, text, accepted", [
    ("use_rslora", "ture", "true or false"), ("r", "8.5", "whole number"), ("r", "eight", "whole number"),
    ("alpha", "sixteen", "a number"), ("sizes", "1,two", "whole number"), ("r", "none", "whole number")])
def test_a_bad_value_is_refused_naming_it_and_what_is_accepted(key, text, accepted):
    with pytest.raises(ValueError) as err:
        config_from_options(Config, {key: text})
    assert f"{key}={text!r}" in str(err.value) and accepted in str(err.value)


def test_an_unknown_option_is_refused_naming_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown .*'rank'.*accepts: r, alpha, use_rslora"):
        parse_options(Config, {"rank": "4"})


def test_python_values_pass_through_and_defaults_give_way_to_options():
    assert parse_options(Config, {"r": 2, "target_modules": ["q"]}) == {"r": 2, "target_modules": ["q"]}
    assert parse_options(Config, None) == {}
    assert config_from_options(Config, {}, name="default").name == "default"
    assert config_from_options(Config, {"name": "given"}, name="default").name == "given"


def test_every_method_reads_booleans_the_same_way(impl):
    """The techniques' own option reading is this one: "ture" is an error everywhere, never False."""
    from labs.methods import METHODS
    for method in METHODS.values():
        if method.config is None:
            continue
        config_class = getattr(impl(method.module), method.config)
        flags = [n for n, t in config_class.__annotations__.items() if t == "bool"]
        for flag in flags:
            with pytest.raises(ValueError, match="ture"):
                config_from_options(config_class, {flag: "ture"})
