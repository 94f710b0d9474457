"""The loss registry is the one list of losses: config, YAML presets and the dispatcher follow it."""

import dataclasses
import inspect

import pytest
import torch

from nemo_rpo.config.schema import ConfigError, LossConfig, RPOConfig
from nemo_rpo.config.store import conf_dir
from nemo_rpo.losses import ALIASES, LOSSES, LossSpec, canonical_name, preference_loss, register_loss


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_function_takes_what_its_spec_declares(name):
    """The keyword-only arguments of ``fn`` are exactly the declared tensors and hyper-parameters."""
    spec = LOSSES[name]
    params = inspect.signature(spec.fn).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), name
    assert [p.name for p in params] == [*spec.inputs, *spec.hparams]


def test_every_hparam_is_a_loss_config_field():
    fields = {f.name for f in dataclasses.fields(LossConfig)}
    for spec in LOSSES.values():
        assert set(spec.hparams) <= fields, spec.name


def test_every_loss_has_one_yaml_and_every_yaml_one_loss():
    assert {p.stem for p in (conf_dir() / "loss").glob("*.yaml")} == set(LOSSES)


def test_config_accepts_a_registered_loss_and_nothing_else():
    """Registering a loss is all the config needs: name, aliases and pairwise follow the registry."""

    def margin_loss(*, policy_logps: torch.Tensor, beta: float) -> torch.Tensor:
        return -beta * (policy_logps[:, 0] - policy_logps[:, 1])

    with pytest.raises(ConfigError, match=r"^loss.name: unknown loss 'toy'; choose one of rpo_sq, "):
        LossConfig(name="toy")
    register_loss("toy", needs_rewards=False, uses_reference=False, hparams=("beta",), pairwise=True,
                  aliases=("toy_alias",))(margin_loss)  # fmt: skip
    try:
        assert LossConfig(name="toy_alias").name == "toy"
        with pytest.raises(ConfigError, match="^k: loss toy is pairwise: set k=2$"):
            RPOConfig(loss=LossConfig(name="toy"), k=4)
        policy = torch.tensor([[1.0, 3.0]])
        assert preference_loss("toy", policy_logps=policy, beta=0.5).item() == 1.0
    finally:
        del LOSSES["toy"], ALIASES["toy_alias"]


def test_a_taken_name_cannot_be_registered_again():
    with pytest.raises(ValueError, match="'rpo_bwd_kl' is already a loss name or alias"):
        register_loss("mine", needs_rewards=False, uses_reference=False, aliases=("rpo_bwd_kl",))(len)
    assert "mine" not in LOSSES


def test_a_misspelt_hyper_parameter_is_an_error():
    x = torch.zeros(2, 2)
    with pytest.raises(TypeError, match="no loss takes the hyper-parameter"):
        preference_loss("dpo", policy_logps=x, ref_logps=x, beta=0.1, bta=0.1)


def test_aliases_resolve_and_specs_are_frozen():
    assert canonical_name("rpo_bwd_kl") == "rpo_bwd"
    assert isinstance(LOSSES["rpo_bwd"], LossSpec) and LOSSES["rpo_bwd"].metric == "bwd"
    with pytest.raises(dataclasses.FrozenInstanceError):
        LOSSES["dpo"].pairwise = False
