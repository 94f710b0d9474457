"""A plain-PyTorch Llama-shaped model and DPO step: the same-run baseline for ``bench_step.py``.

Written the way a careful engineer writes a minimal DPO loop without a framework: ``nn.Linear``
(fused QKV and fused gate/up projections, no biases, as megatron's local spec has), ``nn.RMSNorm``
(the class megatron's local spec instantiates), rotary embeddings applied as ``x*cos + rotate_half(x)*sin``
with a cached table, ``F.scaled_dot_product_attention(is_causal=True)``, an untied LM head,
``log_softmax`` + ``gather`` for token log-probs, the sigmoid DPO loss against precomputed reference
sequence log-probs, global-norm gradient clipping and ``torch.optim.AdamW`` (the optimizer megatron falls
back to without apex/TE). Batch-first ``[b, s, h]`` layout throughout.

Nothing here is imported by the package; it exists so that a megatron step and a framework-free step
are timed in the same process, in the same rounds, on the same allocator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PlainDPO", "PlainLlama", "PlainShape"]


@dataclass(frozen=True)
class PlainShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_hidden_size: int
    max_seq_len: int
    rotary_base: float = 10000.0
    eps: float = 1e-5


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class _Block(nn.Module):
    def __init__(self, shape: PlainShape) -> None:
        super().__init__()
        h, f = shape.hidden_size, shape.ffn_hidden_size
        self.num_heads = shape.num_heads
        self.attn_norm = nn.RMSNorm(h, eps=shape.eps)
        self.qkv = nn.Linear(h, 3 * h, bias=False)
        self.proj = nn.Linear(h, h, bias=False)
        self.mlp_norm = nn.RMSNorm(h, eps=shape.eps)
        self.gate_up = nn.Linear(h, 2 * f, bias=False)
        self.down = nn.Linear(f, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, s, 3, self.num_heads, -1).transpose(1, 3).unbind(2)
        q = q * cos + _rotate_half(q) * sin  # [b, n, s, d]
        k = k * cos + _rotate_half(k) * sin
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, h))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class PlainLlama(nn.Module):
    """Token embedding, pre-norm blocks, final RMSNorm, untied LM head; returns logits ``[b, s, V]``."""

    def __init__(self, shape: PlainShape, init_std: float = 0.02) -> None:
        super().__init__()
        self.embed = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.blocks = nn.ModuleList(_Block(shape) for _ in range(shape.num_layers))
        self.norm = nn.RMSNorm(shape.hidden_size, eps=shape.eps)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        head_dim = shape.hidden_size // shape.num_heads
        inv_freq = 1.0 / shape.rotary_base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(shape.max_seq_len).float(), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        gen = torch.Generator().manual_seed(1234)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=init_std, generator=gen)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        cos, sin = self.cos[:s], self.sin[:s]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.norm(x))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed ``log p(label)`` over masked positions: ``[b, s, V], [b, s], [b, s] -> [b]``."""
    token_logps = logits.log_softmax(dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=-1)


class PlainDPO:
    """One DPO training step per call; the reference log-probs are computed once, at construction.

    Args:
        model: the policy; its initial weights are the reference.
        input_ids, labels, mask: ``[2P, s]`` sequences, chosen and rejected of each pair adjacent
            (rows ``2i`` and ``2i+1``), as ``collate`` lays out K=2 preference batches.
        micro_batch_size: pairs per forward/backward; gradients accumulate over micro-batches.
    """

    def __init__(
        self,
        model: PlainLlama,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        *,
        micro_batch_size: int,
        beta: float = 0.1,
        lr: float = 3e-3,
        clip_grad: float = 1.0,
    ) -> None:
        self.model = model
        self.beta, self.clip_grad = beta, clip_grad
        rows = 2 * micro_batch_size
        self.chunks = [
            (input_ids[i : i + rows], labels[i : i + rows], mask[i : i + rows].float())
            for i in range(0, input_ids.shape[0], rows)
        ]
        self.num_pairs = input_ids.shape[0] // 2
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        with torch.no_grad():
            self.ref_logps = [sequence_logps(model(ids), lab, m).view(-1, 2) for ids, lab, m in self.chunks]

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for (ids, lab, m), ref in zip(self.chunks, self.ref_logps):
            policy = sequence_logps(self.model(ids), lab, m).view(-1, 2)
            margin = (policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1])
            loss = -F.logsigmoid(self.beta * margin).sum() / self.num_pairs
            loss.backward()
            total += float(loss.detach())
        if self.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.optimizer.step()
        return total


def plain_step_fn(shape: PlainShape, input_ids, labels, mask, micro_batch_size: int) -> Callable[[], float]:
    """Build model + trainer; returns the zero-argument step function the benchmark times."""
    trainer = PlainDPO(PlainLlama(shape), input_ids, labels, mask, micro_batch_size=micro_batch_size)
    return trainer.step
