"""Iterative schedules (Alg. 3/4): how steps, beta and eta are split over iterations."""

from nemo_rpo.algorithms.common import iteration_at, iteration_plan
from nemo_rpo.config.schema import RPOConfig, ScheduleConfig, TrainerConfig


def test_even_split_and_overrides():
    cfg = RPOConfig(trainer=TrainerConfig(max_steps=10),
                    schedule=ScheduleConfig(iterations=3, beta=[0.3, 0.2, 0.1], eta=[1.0, 2.0, 3.0]))  # fmt: skip
    plan = iteration_plan(cfg)
    assert [(it.start, it.end) for it in plan] == [(0, 4), (4, 7), (7, 10)]
    assert [(it.loss.beta, it.loss.eta) for it in plan] == [(0.3, 1.0), (0.2, 2.0), (0.1, 3.0)]
    assert [iteration_at(plan, s).index for s in range(10)] == [0] * 4 + [1] * 3 + [2] * 3


def test_explicit_steps_and_single_iteration():
    cfg = RPOConfig(trainer=TrainerConfig(max_steps=9), schedule=ScheduleConfig(iterations=2, steps=[2, 7]))
    assert [(it.start, it.end) for it in iteration_plan(cfg)] == [(0, 2), (2, 9)]
    single = iteration_plan(RPOConfig(trainer=TrainerConfig(max_steps=5)))
    assert [(it.index, it.start, it.end, it.loss) for it in single] == [(0, 0, 5, RPOConfig().loss)]
