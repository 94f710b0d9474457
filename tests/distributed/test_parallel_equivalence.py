"""TP/PP/DP equivalence and checkpoint resharding on CPU with gloo.

Three launches of ``_workers.py`` (4, 2 and 1 processes; about a minute on 2 cores) feed every test in
this file: a tiny GPT (4 layers, hidden 64, 4 heads, vocab 256, seq 32, batch 8) must give the same
token log-probs and gradients under TP=2, PP=2 and TP=2 x PP=2 as under TP=1 (weights come from a TP=1
checkpoint, so the checkpoint module is exercised too); DP=2 must follow the DP=1 loss trajectory; and a
TP=2 checkpoint must resume under TP=1 exactly where an uninterrupted TP=1 run is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _launch import run_workers

pytestmark = pytest.mark.distributed

WORKERS = Path(__file__).with_name("_workers.py")
ATOL = 1e-5
CKPT_STEP, TOTAL_STEPS = 2, 4  # mirrors _workers.CKPT_STEP, CKPT_STEP + RESUME_STEPS


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("equivalence")
    run_workers(WORKERS, 4, ["equivalence", str(out)])
    return torch.load(out / "equivalence.pt", weights_only=True)


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("training")
    run_workers(WORKERS, 2, ["train_multi", str(out)])  # writes the TP=2 checkpoints ...
    run_workers(WORKERS, 1, ["train_single", str(out)])  # ... that this TP=1 run resumes
    results = torch.load(out / "train_multi.pt", weights_only=True)
    results.update(torch.load(out / "train_single.pt", weights_only=True))
    for dist_opt in (0, 1):
        results[f"tp2_dist{dist_opt}_weights"] = torch.load(
            out / f"tp2_dist{dist_opt}_weights.pt", weights_only=True
        )
    return results


@pytest.mark.parametrize("layout", ["tp2_pp1", "tp1_pp2", "tp2_pp2"])
def test_token_logps_and_grads_match_tp1(equivalence: dict, layout: str) -> None:
    ref, other = equivalence["tp1_pp1"], equivalence[layout]
    assert ref["logps"].shape == (8, 32)
    assert (ref["logps"] < 0).all()
    torch.testing.assert_close(other["logps"], ref["logps"], atol=ATOL, rtol=0)

    assert sorted(other["grads"]) == sorted(ref["grads"])
    for name, ref_grad in ref["grads"].items():
        torch.testing.assert_close(other["grads"][name], ref_grad, atol=ATOL, rtol=0, msg=name)
        # Gradients here are ~1e-2 or smaller, so also bound the error relative to each tensor.
        assert (other["grads"][name] - ref_grad).norm() <= 1e-4 * ref_grad.norm() + 1e-12, name


@pytest.mark.parametrize("optimizer", ["plain", "distributed"])
def test_dp2_loss_trajectory_matches_dp1(training: dict, optimizer: str) -> None:
    key = int(optimizer == "distributed")
    dp1, dp2 = torch.tensor(training[f"dp1_dist{key}"]), torch.tensor(training[f"dp2_dist{key}"])
    assert len(dp1) == 3 and len(set(dp1.tolist())) == 3  # three real, different steps
    torch.testing.assert_close(dp2, dp1, atol=ATOL, rtol=0)


@pytest.mark.parametrize("optimizer", ["plain", "distributed"])
def test_checkpoint_saved_with_tp2_resumes_with_tp1(training: dict, optimizer: str) -> None:
    key = int(optimizer == "distributed")
    resumed = training[f"tp1_dist{key}_resumed"]
    uninterrupted = torch.tensor(training[f"tp1_dist{key}_uninterrupted"])

    saved_weights = training[f"tp2_dist{key}_weights"]
    assert sorted(resumed["weights"]) == sorted(saved_weights)
    for name, weight in saved_weights.items():
        torch.testing.assert_close(resumed["weights"][name], weight, atol=0, rtol=0, msg=name)

    assert Path(resumed["path"]).name == f"step_{CKPT_STEP:08d}"
    assert resumed["extra"] == {"data_position": CKPT_STEP, "step": CKPT_STEP}
    assert resumed["scheduler_steps"] == CKPT_STEP
    assert resumed["adam_steps"] and set(resumed["adam_steps"]) == {float(CKPT_STEP)}
    assert resumed["exp_avg_sq_min"] > 0  # optimizer moments were loaded, not re-initialised
    torch.testing.assert_close(torch.tensor(resumed["losses"]), uninterrupted[CKPT_STEP:], atol=ATOL, rtol=0)
    # One Adam step per optimizer step for every parameter (megatron shares one `step` tensor otherwise).
    assert set(resumed["adam_steps_after"]) == {float(TOTAL_STEPS)}


@pytest.mark.parametrize("optimizer", ["plain", "distributed"])
def test_checkpoint_same_layout_restores_rng_and_schedule(training: dict, optimizer: str) -> None:
    key = int(optimizer == "distributed")
    same = training[f"tp2_dist{key}_same_layout"]
    assert same["rng_equal"]
    assert same["extra"] == {"data_position": CKPT_STEP, "step": CKPT_STEP}
    assert same["scheduler_steps"] == CKPT_STEP  # loading into a stepped scheduler must not add up
    assert set(same["adam_steps"]) == {float(CKPT_STEP)}
    uninterrupted = torch.tensor(training[f"tp1_dist{key}_uninterrupted"])
    torch.testing.assert_close(torch.tensor(same["losses"]), uninterrupted[CKPT_STEP:], atol=ATOL, rtol=0)
    assert set(same["adam_steps_after"]) == {float(TOTAL_STEPS)}


def test_checkpoint_keep_last_and_incomplete_dirs(training: dict) -> None:
    prune = training["prune"]
    assert prune["dirs"] == ["latest", "step_00000002", "step_00000003", "step_00000009"]
    assert prune["latest"] == "step_00000003"  # step 9 has no COMPLETE marker
