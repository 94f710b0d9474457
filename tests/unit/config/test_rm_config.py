"""conf/train_rm.yaml composes into RMTrainConfig; bad values fail with the field named; saved configs reload."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_rpo.cli.train_rm import load_rm_config
from nemo_rpo.config.rm_schema import RMTrainConfig, rm_config_from_dict
from nemo_rpo.config.schema import ConfigError, ModelConfig


def test_default_composes_with_the_tiny_model() -> None:
    cfg = load_rm_config([])
    assert isinstance(cfg, RMTrainConfig)
    assert (cfg.objective, cfg.k, cfg.data.train_path) == ("bradley_terry", 4, None)
    model = cfg.model
    assert (model.num_layers, model.hidden_size, model.max_seq_len) == (2, 64, 128)  # conf/model/tiny
    assert (cfg.optim.lr, cfg.trainer.max_steps) == (1e-3, 100)  # the RM's own defaults


def test_overrides_and_model_presets() -> None:
    cfg = load_rm_config(["objective=regression", "k=2", "parallel.pp=2", "optim.lr=1e-4", "model=llama3_8b"])
    assert (cfg.objective, cfg.k, cfg.parallel.pp, cfg.optim.lr) == ("regression", 2, 2, 1e-4)
    assert cfg.model.num_layers != ModelConfig().num_layers


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("objective=hinge", "unknown objective 'hinge'"),
        ("k=1", "k: must be >= 2"),
        ("parallel.tp=3", "parallel.tp: tp=3 must divide"),
        ("loss.beta=1", "Could not override 'loss.beta'"),  # the policy's keys are not the RM's
    ],
)
def test_bad_values_raise_clear_errors(override: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        load_rm_config([override])


def test_saved_config_round_trips() -> None:
    cfg = load_rm_config(["objective=regression", "data.tokenizer.type=hf", "data.tokenizer.path=/tok"])
    assert rm_config_from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ConfigError, match=r"model: unknown keys \['bogus'\]"):
        rm_config_from_dict({"model": {"bogus": 1}})
    with pytest.raises(ConfigError, match="objective"):
        rm_config_from_dict({"objective": "nope"})
