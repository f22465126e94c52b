"""The config loader rejects what a typo would produce and coerces CLI strings by field type."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from engine.config import ConfigError, load_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-4  # peak learning rate
    name: Literal["adamw", "lamb"] = "adamw"  # optimizer


@dataclass
class Run:
    steps: int = 10  # optimizer steps
    optim: Optim = field(default_factory=Optim)  # optimizer section
    tags: list[str] = field(default_factory=list)  # free labels


def test_overrides_are_typed_by_the_field():
    cfg = load_config(Run, overrides=["--steps=20", "--optim.lr=3e-4", "--optim.name=lamb", "--tags=a,b"])
    assert cfg.steps == 20 and cfg.optim.lr == 3e-4 and cfg.optim.name == "lamb" and cfg.tags == ["a", "b"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(Run, overrides=["--optim.lrr=1"])


def test_bad_choice_and_bad_int_are_rejected():
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(Run, overrides=["--optim.name=sgd"])
    with pytest.raises(ConfigError, match="steps"):
        load_config(Run, overrides=["--steps=2.5"])


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("steps = 5\n[optim]\nlr = 0.5\n")
    cfg = load_config(Run, path, ["--steps=6"])
    assert to_dict(cfg) == {"steps": 6, "optim": {"lr": 0.5, "name": "adamw"}, "tags": []}


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(Run, tmp_path / "nope.toml")
