"""token_logps / forward_token_logps in a one-process megatron world (TP=1); TP>1 is in tests/distributed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from megatron.core import tensor_parallel

from nemo_rpo.config.schema import ModelConfig, ParallelConfig
from nemo_rpo.distributed.launch import ParallelInfo
from nemo_rpo.models.gpt import build_gpt_model
from nemo_rpo.models.logps import forward_token_logps, token_logps


def reference_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def random_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 5, 11, generator=gen) * 3, torch.randint(0, 11, (2, 5), generator=gen)


def test_matches_log_softmax_and_its_gradient(world1: ParallelInfo) -> None:
    logits, labels = random_case()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = token_logps(ours_in, labels)
    ref = reference_logps(ref_in, labels)
    assert ours.shape == (2, 5) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref)

    weights = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)


def test_input_logits_are_left_intact_unless_inplace(world1: ParallelInfo) -> None:
    logits, labels = random_case()
    # The hazard being guarded against: megatron's kernel overwrites fp32 logits with the softmax.
    clobbered = logits.clone()
    tensor_parallel.vocab_parallel_cross_entropy(clobbered, labels)
    torch.testing.assert_close(clobbered.sum(-1), torch.ones(2, 5))

    kept = logits.clone()
    token_logps(kept, labels)
    assert torch.equal(kept, logits)
    consumed = logits.clone()
    torch.testing.assert_close(token_logps(consumed, labels, inplace=True), reference_logps(logits, labels))
    assert not torch.equal(consumed, logits)


def test_negative_labels_give_zero_and_no_gradient(world1: ParallelInfo) -> None:
    logits, labels = random_case()
    labels[0, 3:] = -100
    logits.requires_grad_()
    logps = token_logps(logits, labels)
    assert torch.equal(logps[0, 3:], torch.zeros(2))
    torch.testing.assert_close(logps[1], reference_logps(logits.detach()[1], labels[1]))
    logps.sum().backward()
    assert torch.equal(logits.grad[0, 3:], torch.zeros(2, 11))


def test_bf16_logits_give_fp32_logps(world1: ParallelInfo) -> None:
    logits, labels = random_case()
    low = logits.bfloat16()
    logps = token_logps(low, labels)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, reference_logps(low.float(), labels))


@pytest.fixture(scope="module")
def tiny_model(world1: ParallelInfo, tiny_config: Callable[..., ModelConfig]) -> torch.nn.Module:
    return build_gpt_model(tiny_config(), ParallelConfig(), vocab_size=100)


def test_forward_token_logps_is_batch_major_and_matches_megatron_loss(tiny_model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 100, (3, 16), generator=gen)
    labels = torch.randint(0, 100, (3, 16), generator=gen)
    position_ids = torch.arange(16).expand(3, 16)

    logits = tiny_model(input_ids, position_ids, None)
    assert logits.shape == (3, 16, 128)  # [b, s, V padded to 128]: batch-major
    logps = forward_token_logps(tiny_model, input_ids, position_ids, labels)
    assert logps.shape == (3, 16)
    torch.testing.assert_close(logps, reference_logps(logits.detach(), labels))
    # Megatron's own label path returns the per-token NLL: the same numbers, negated.
    torch.testing.assert_close(logps, -tiny_model(input_ids, position_ids, None, labels=labels))

    # Batch-major and causal: changing sample 1's last token changes only logps[1, -1].
    edited = input_ids.clone()
    edited[1, -1] = (edited[1, -1] + 1) % 100
    delta = (forward_token_logps(tiny_model, edited, position_ids, labels) - logps).abs()
    assert delta[1, -1] > 0
    delta[1, -1] = 0
    assert torch.equal(delta, torch.zeros_like(delta))
