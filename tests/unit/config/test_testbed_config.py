"""conf/testbed.yaml composes into a TestbedConfig; its checks are one-line config errors."""

import pytest

from nemo_rpo.cli.testbed import load_testbed_config
from nemo_rpo.config.schema import ConfigError
from nemo_rpo.config.testbed_schema import METHODS
from nemo_rpo.testbed.methods import method_spec
from nemo_rpo.testbed.stats import mean_ci, seed_ci, win_rates


def test_testbed_yaml_composes_full_and_quick():
    full = load_testbed_config([])
    assert full.scale.methods == list(METHODS) and full.scale.seeds == [1, 2, 3]
    quick = load_testbed_config(["quick=true"])
    assert quick.scale is quick.small and len(quick.scale.seeds) == 1
    assert quick.model.hidden_size == 64  # conf/model/tiny.yaml


@pytest.mark.parametrize(
    ("override", "message"),
    [("full.methods=[nope]", "methods: unknown"), ("batch_size=7", "batch_size"),
     ("losses.dpo.name=simpo", "losses.dpo.name")],
)  # fmt: skip
def test_bad_values_raise(override, message):
    with pytest.raises(ConfigError, match=message):
        load_testbed_config([override])


def test_every_method_has_a_spec():
    specs = {name: method_spec(name, 3) for name in METHODS}
    assert specs["rpo_sqloo_k2"].k == 2 and specs["rpo_sqloo_k2"].loss == "rpo_sqloo"
    assert specs["online_rpo_sqloo_learnt"].rm == "learnt" and specs["online_rpo_sqloo_learnt"].online
    assert specs["iter_offline_rpo_bwd"].iterations == 3 and not specs["iter_offline_rpo_bwd"].online
    assert specs["kto"].k == 2 and not specs["kto"].online


def test_intervals():
    """mean_ci of [0, 1]: mean 0.5, sd 0.7071, half width 1.96 * 0.7071 / sqrt(2) = 0.98."""
    ci = mean_ci([0.0, 1.0])
    assert ci["mean"] == 0.5 and abs(ci["hi"] - 1.48) < 1e-9
    assert seed_ci([0.4]) == {"mean": 0.4, "lo": 0.4, "hi": 0.4}
    assert abs(seed_ci([0.0, 1.0])["hi"] - (0.5 + 12.706 * 0.5)) < 1e-9  # t(0.975, 1 dof) * sd / sqrt(2)
    assert win_rates([0.5, 0.2, 0.3], [0.4, 0.2, 0.9]) == [1.0, 0.5, 0.0]
