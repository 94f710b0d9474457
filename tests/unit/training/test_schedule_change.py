"""schedule_change: what a resume with another config does to the learning rate of the steps left."""

from __future__ import annotations

import pytest

from nemo_rpo.config.schema import OptimConfig
from nemo_rpo.training.optimizer import _schedule_settings, schedule_change


def _saved(optim: OptimConfig, max_steps: int) -> dict:
    """The scheduler state a checkpoint of this config holds (megatron's state_dict keys)."""
    return {k: v for k, v in _schedule_settings(optim, max_steps).items() if k != "init_lr"}


def test_a_longer_cosine_run_changes_the_lr_of_the_next_step():
    """lr 3e-3, warmup 5, cosine to 0: the checkpoint's schedule ends at step 20 (step 21 runs at min_lr 0);
    over 30 steps, step 21 is 20 steps in: ratio (20 - 5) / (30 - 5) = 0.6, lr = 3e-3 * (1 + cos(0.6 pi)) / 2
    = 3e-3 * 0.3454915 = 1.036e-3."""
    optim = OptimConfig()
    assert schedule_change(_saved(optim, 20), optim, 30, 20) == (
        "decay steps (trainer.max_steps) 20 -> 30; lr of step 21 0.00e+00 -> 1.04e-03"
    )


@pytest.mark.parametrize(
    "optim, saved_steps, max_steps, start",
    [
        (OptimConfig(), 20, 20, 10),  # the same config
        (OptimConfig(warmup_steps=0, decay_style="constant"), 3, 6, 3),  # constant: length changes nothing
        (OptimConfig(warmup_steps=5), 4, 6, 4),  # both decay over warmup + 1 = 6 steps
    ],
)
def test_the_same_values_for_the_steps_left_are_no_change(optim, saved_steps, max_steps, start):
    assert schedule_change(_saved(optim, saved_steps), optim, max_steps, start) is None


def test_another_peak_lr_is_named():
    """Warmup 5 then cosine over 20: after 10 steps, ratio 5/15, coeff (1 + cos(pi/3)) / 2 = 0.75."""
    saved = _saved(OptimConfig(), 20)
    assert schedule_change(saved, OptimConfig(lr=1e-3), 20, 10) == (
        "optim.lr 0.003 -> 0.001; lr of step 11 2.25e-03 -> 7.50e-04"
    )


def test_weight_decay_alone_is_a_change():
    saved = _saved(OptimConfig(), 20)
    assert schedule_change(saved, OptimConfig(weight_decay=0.1), 20, 10) == (
        "optim.weight_decay 0.0 -> 0.1; weight decay of step 11 0 -> 0.1"
    )
