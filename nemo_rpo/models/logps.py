"""Tensor-parallel token log-probabilities, straight from vocab-parallel logits.

Each TP rank holds logits for its slice of the vocabulary. ``log p(label)`` needs only the label's logit
and the log-sum-exp over the full vocabulary, which megatron's ``vocab_parallel_cross_entropy`` gets
with three all-reduces of ``[b, s]`` tensors (max, label logit, sum-exp), so the ``[b, s, V]`` logits
are never gathered. Its backward is the softmax minus one-hot, also local.

With one TP rank the whole vocabulary is local and :func:`vocab_parallel_nll` takes a shorter path
over the ``[b, s, V]`` logits (the largest activation of a small model): one fused in-place
``log_softmax`` forward (megatron: max, subtract, exp, sum, divide — five passes and three
all-reduces), and a backward of ``exp`` and a scale in place. Same numbers, to float rounding.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel

__all__ = ["forward_token_logps", "token_logps", "vocab_parallel_nll"]


class _LocalNLL(torch.autograd.Function):
    """``-log_softmax(logits)[label]`` over a vocabulary held whole by this rank; overwrites ``logits``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        logps = torch.log_softmax(logits, dim=-1, out=logits)
        index = labels.unsqueeze(-1)
        nll = logps.gather(-1, index).squeeze(-1).neg_()
        ctx.save_for_backward(logps, index)
        return nll

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        logps, index = ctx.saved_tensors
        # d nll / d logits = softmax - one_hot(label); scaled per token by the incoming gradient.
        grad = grad.unsqueeze(-1)
        grad_logits = logps.exp_().mul_(grad)
        grad_logits.scatter_add_(-1, index, grad.neg())
        return grad_logits, None


def vocab_parallel_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token ``-log p(label)`` from vocab-parallel logits, in fp32; may overwrite fp32 ``logits``.

    The same contract as megatron's ``tensor_parallel.vocab_parallel_cross_entropy`` (which it calls
    when TP > 1, or when a label lies outside ``[0, V)``): ``logits`` ``[..., V/tp]``, ``labels``
    ``[...]`` -> ``[...]`` fp32.
    """
    outside = (labels < 0) | (labels >= logits.shape[-1])
    if parallel_state.get_tensor_model_parallel_world_size() > 1 or bool(outside.any()):
        return tensor_parallel.vocab_parallel_cross_entropy(logits, labels.contiguous())
    return _LocalNLL.apply(logits.float(), labels)  # .float(): a copy for 16-bit logits, as megatron


def token_logps(logits: torch.Tensor, labels: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Per-token ``log p(label)`` from vocab-parallel logits, in fp32, differentiable.

    :func:`vocab_parallel_nll` overwrites an fp32 input in place (with the log-softmax, or megatron's
    softmax when TP > 1, which it saves for backward), so by default an fp32 input is copied first;
    bf16/fp16 logits are upcast, which copies anyway. Pass
    ``inplace=True`` only for logits nothing else reads afterwards (saves one ``[b, s, V/tp]`` copy).

    Args:
        logits: ``[b, s, V/tp]`` this rank's vocabulary slice, as ``GPTModel.forward`` returns it (the
            function only needs the vocabulary to be the last dimension).
        labels: ``[b, s]`` token ids in ``[0, V)``; negative ids (padding such as -100) give log-prob
            0 and no gradient, so the caller's mask decides what counts.
        inplace: allow the fp32 ``logits`` buffer to be overwritten.

    Returns:
        ``[b, s]`` fp32 log-probabilities, identical on every TP rank.
    """
    if logits.dtype != torch.float32:
        logits = logits.float()
    elif not inplace:
        logits = logits.clone()
    valid = labels >= 0
    # Megatron treats out-of-slice ids as "another rank's", so a negative id would silently yield
    # -logsumexp; send it to id 0 and zero the result instead.
    nll = vocab_parallel_nll(logits, torch.where(valid, labels, 0))
    return torch.where(valid, -nll, 0.0)


def forward_token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the (possibly DDP-wrapped) GPT model and turn its logits into token log-probs.

    The model is called with ``labels=None`` so it returns logits (with labels it would return the
    per-token NLL, which is the same number, negated); the logits are a fresh ``[b, s, V/tp]`` copy
    (GPTModel transposes from ``[s, b, V/tp]``), so they are consumed in place.

    Args:
        model: a ``GPTModel`` stage, or a wrapper whose ``forward`` has the same signature.
        input_ids: ``[b, s]`` tokens (ignored by non-first pipeline stages, which read the received
            activation set through ``set_input_tensor``).
        position_ids: ``[b, s]``.
        labels: ``[b, s]`` next-token ids (see :func:`token_logps` for negative ids).
        attention_mask: ``None`` for plain causal attention.

    Returns:
        ``[b, s]`` fp32 log-probs on the last pipeline stage; on other stages the stage's output
        activation ``[s, b, h]``, which the pipeline schedule sends downstream.
    """
    output = model(input_ids, position_ids, attention_mask, labels=None)
    if not parallel_state.is_pipeline_last_stage():
        return output
    return token_logps(output, labels, inplace=True)
