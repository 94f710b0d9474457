"""The testbed's hyper-parameter search grid and how a method's tuned values reach its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_rpo.cli.testbed import load_testbed_config
from nemo_rpo.config.schema import ConfigError
from nemo_rpo.testbed.methods import method_spec
from nemo_rpo.testbed.pipeline import method_hparams, search_candidates


def test_candidates_search_eta_only_for_rpo_bwd():
    cfg = load_testbed_config(
        ["search_space.lr=[1e-4,3e-4]", "search_space.beta=[0.1]", "search_space.eta=[3,30]"]
    )
    bwd = search_candidates(cfg, method_spec("online_rpo_bwd_gt", 3))
    assert bwd == [{"lr": 1e-4, "beta": 0.1, "eta": 3.0}, {"lr": 1e-4, "beta": 0.1, "eta": 30.0},
                   {"lr": 3e-4, "beta": 0.1, "eta": 3.0}, {"lr": 3e-4, "beta": 0.1, "eta": 30.0}]  # fmt: skip
    assert search_candidates(cfg, method_spec("rpo_sqloo_k4", 3)) == [
        {"lr": 1e-4, "beta": 0.1},
        {"lr": 3e-4, "beta": 0.1},
    ]
    assert len(search_candidates(load_testbed_config([]), method_spec("dpo", 3))) == 6  # 2 lr x 3 beta


def test_tuned_values_override_the_shared_ones_and_reach_iterative_runs():
    cfg = load_testbed_config(["tuned.rpo_bwd_k4.lr=5e-5", "tuned.rpo_bwd_k4.eta=20", "tuned.dpo.beta=0.2",
                               "tuned.online_rpo_sqloo_gt.lr=null", "tuned.online_rpo_sqloo_gt.beta=null"])  # fmt: skip
    committed = load_testbed_config([]).tuned["rpo_bwd_k4"]
    loss, lr = method_hparams(cfg, method_spec("rpo_bwd_k4", 3))
    assert (lr, loss.eta, loss.beta) == (5e-5, 20.0, committed.beta)  # the others keep the committed values
    loss, lr = method_hparams(cfg, method_spec("iter_offline_rpo_bwd", 3))  # Alg. 3 uses rpo_bwd_k4's values
    assert (lr, loss.eta) == (5e-5, 20.0)
    loss, lr = method_hparams(cfg, method_spec("dpo", 3))
    assert (lr, loss.beta) == (cfg.tuned["dpo"].lr, 0.2)
    loss, lr = method_hparams(cfg, method_spec("online_rpo_sqloo_gt", 3))  # null: the shared defaults
    assert (lr, loss.beta, loss.eta) == (
        cfg.online_lr,
        cfg.losses["rpo_sqloo"].beta,
        cfg.losses["rpo_sqloo"].eta,
    )
    assert cfg.losses["rpo_bwd"].eta != 20.0  # the shared config is not modified


def test_committed_search_results_are_the_defaults():
    """The `tuned` defaults are the winners recorded in the committed search output, method by method."""
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "2026-12-06-testbed-search.json"
    search = json.loads(path.read_text())
    cfg = load_testbed_config([])
    assert set(search["tuned"]) == set(cfg.tuned)
    for name, chosen in search["tuned"].items():
        assert cfg.tuned[name].values() == chosen, name
        best = max(search["candidates"][name], key=lambda r: r["valid_reward"])
        assert {k: best[k] for k in chosen} == chosen, name


@pytest.mark.parametrize(
    "override, message",
    [("tuned.dpo.lr=-1", "lr: must be > 0"),
     ("search_space.lr=[0]", "search_space.lr: needs values > 0")],
)  # fmt: skip
def test_bad_search_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as err:
        load_testbed_config([override])
    assert message in str(err.value)
