"""The issue-21 rows of the testbed grid: listwise losses and token-level RPO, offline K=4 beside rpo_bwd_k4."""

from nemo_rpo.config.testbed_schema import METHODS, TestbedConfig
from nemo_rpo.testbed.methods import method_spec


def test_every_method_names_a_configured_loss():
    losses = TestbedConfig().losses
    for name in METHODS:
        assert method_spec(name, 3).loss in losses, name


def test_listwise_and_token_level_rows():
    cfg = TestbedConfig()
    for name, loss in (("lipo_lambda_k4", "lipo_lambda"), ("plackett_luce_k4", "plackett_luce"),
                       ("rpo_token_bwd_k4", "rpo_token_bwd")):  # fmt: skip
        spec = method_spec(name, 3)
        assert (spec.loss, spec.k, spec.online, spec.rm, spec.iterations) == (loss, 4, False, "gt", 1)
        assert cfg.losses[loss].name == loss
    assert cfg.losses["rpo_token_bwd"].token_decay == 0.9
