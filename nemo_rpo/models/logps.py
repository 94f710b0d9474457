"""Tensor-parallel token log-probabilities, straight from vocab-parallel logits.

Each TP rank holds logits for its slice of the vocabulary. ``log p(label)`` needs only the label's logit
and the log-sum-exp over the full vocabulary, which megatron's ``vocab_parallel_cross_entropy`` gets
with three all-reduces of ``[b, s]`` tensors (max, label logit, sum-exp), so the ``[b, s, V]`` logits
are never gathered. Its backward is the softmax minus one-hot, also local.

With one TP rank the whole vocabulary is local and :func:`vocab_parallel_nll` takes a shorter path
over the ``[b, s, V]`` logits (the largest activation of a small model): one fused in-place
``log_softmax`` forward (megatron: max, subtract, exp, sum, divide — five passes and three
all-reduces), and a backward of ``exp`` and a scale in place. Same numbers, to float rounding.

:func:`chunked_lm_head_nll` goes one step further for the training path: it takes the hidden states and
the output weight instead of the logits and computes the LM head and the NLL a block of tokens at a
time, so the ``[tokens, V]`` logits and their gradient never exist whole (at SmolLM2-135M's 49,152-id
vocabulary, 3,072 response tokens: 0.6 GB each in fp32). Its backward recomputes each block's logits.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel

__all__ = ["chunked_lm_head_nll", "forward_token_logps", "token_logps", "vocab_parallel_nll"]


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


class _ChunkedLMHeadNLL(torch.autograd.Function):
    """``-log softmax(hidden @ weight.T)[label]``, a block of ``chunk`` tokens at a time.

    ``weight`` is this rank's vocabulary slice ``[V/tp, h]`` starting at id ``vocab_start``; ids
    ``>= real_vocab`` (the padding) are out of the softmax. Under TP the per-token max, sum of
    exponentials and label logit are all-reduced over ``group`` (megatron's
    ``vocab_parallel_cross_entropy``, per block); the hidden gradient this returns is this rank's
    partial sum, which the caller all-reduces (``copy_to_tensor_model_parallel_region``), as
    ``ColumnParallelLinear`` does. A label outside the slice contributes nothing here (another rank
    holds it), so a label outside ``[0, V)`` gets NLL ``logsumexp``, as in megatron.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk, vocab_start, real_vocab, group):  # noqa: ANN001, ANN205
        width = weight.shape[0]
        local = labels - vocab_start
        in_slice = (local >= 0) & (local < width)
        local = torch.where(in_slice, local, 0).unsqueeze(-1)
        pad_from = min(max(real_vocab - vocab_start, 0), width)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        target = torch.empty_like(lse)
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            logits = _block_logits(hidden[start:end], weight, pad_from)
            target[start:end] = logits.gather(-1, local[start:end]).squeeze(-1).mul_(in_slice[start:end])
            top = logits.amax(-1)
            if group is not None:
                torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=group)
            sumexp = logits.sub_(top.unsqueeze(-1)).exp_().sum(-1)
            if group is not None:
                torch.distributed.all_reduce(sumexp, group=group)
            lse[start:end] = sumexp.log_().add_(top)
        if group is not None:
            torch.distributed.all_reduce(target, group=group)
        ctx.save_for_backward(hidden, weight, local, in_slice, lse)
        ctx.chunk, ctx.pad_from = chunk, pad_from
        return lse - target

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN205
        hidden, weight, local, in_slice, lse = ctx.saved_tensors
        grad = grad.float()
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = start + ctx.chunk
            h = hidden[start:end]
            # d nll / d logits = softmax - one_hot(label), scaled per token by the incoming gradient
            probs = _block_logits(h, weight, ctx.pad_from).sub_(lse[start:end].unsqueeze(-1)).exp_()
            probs.scatter_add_(-1, local[start:end], in_slice[start:end].unsqueeze(-1).float().neg_())
            probs = probs.mul_(grad[start:end].unsqueeze(-1)).to(weight.dtype)
            if grad_hidden is not None:
                torch.matmul(probs, weight, out=grad_hidden[start:end])
            if grad_weight is not None and probs.dtype == torch.float32:
                grad_weight.addmm_(probs.t(), h)
            elif grad_weight is not None:  # 16-bit products, summed over blocks in fp32
                grad_weight.add_(probs.t() @ h)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def _block_logits(hidden: torch.Tensor, weight: torch.Tensor, pad_from: int) -> torch.Tensor:
    """fp32 logits ``[n, V/tp]`` of one block, padding columns ``-inf``."""
    logits = torch.matmul(hidden, weight.t()).float()
    if pad_from < logits.shape[-1]:
        logits[:, pad_from:] = float("-inf")
    return logits


def chunked_lm_head_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    chunk_size: int,
    real_vocab_size: int | None = None,
) -> torch.Tensor:
    """Per-token ``-log p(label)`` of the output layer ``hidden @ weight.T`` without whole logits.

    The same numbers as the output layer followed by :func:`vocab_parallel_nll` (to float rounding),
    with the logits and their gradient held ``chunk_size`` tokens at a time; the backward computes each
    block's logits again (one more LM-head product per step, in exchange for never writing or reading
    the ``[tokens, V]`` tensors). Vocab-parallel under TP: every rank passes its slice of the weight.

    Args:
        hidden: ``[s, b, h]`` the last layer's (normalised) hidden states, sequence-first as megatron's
            output layer takes them.
        weight: ``[V/tp, h]`` this TP rank's output weight (the embedding when tied).
        labels: ``[b, s]`` target ids in ``[0, V)``.
        chunk_size: tokens per block.
        real_vocab_size: ids at or above it (the vocabulary padding) are left out of the softmax;
            ``None`` keeps every id.

    Returns:
        ``[b, s]`` fp32 NLL, identical on every TP rank.
    """
    seq, batch, _ = hidden.shape
    tp = parallel_state.get_tensor_model_parallel_world_size()
    width = weight.shape[0]
    group = None
    vocab_start = 0
    if tp > 1:
        group = parallel_state.get_tensor_model_parallel_group()
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * width
        hidden = tensor_parallel.copy_to_tensor_model_parallel_region(hidden)
    real = tp * width if real_vocab_size is None else real_vocab_size
    nll = _ChunkedLMHeadNLL.apply(
        hidden.reshape(seq * batch, -1), weight, labels.t().reshape(-1), chunk_size, vocab_start, real, group
    )
    return nll.view(seq, batch).t()


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
