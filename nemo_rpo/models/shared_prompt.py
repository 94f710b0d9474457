"""Each prompt computed once for its K responses: moving activations between packed rows and sequences.

With ``model.share_prompt`` a micro-batch of B prompts is packed as B rows ``prompt, response_0, ...,
response_{R-1}`` (``[W, B, h]`` activations, :func:`nemo_rpo.data.batch.collate`), so every position-wise
part of the model (embeddings, QKV/output projections, MLP, norms) runs on ``p + sum(len_r)`` tokens per
prompt instead of ``R * p + sum(len_r)``. Only two places need the R sequences themselves:

- core attention: response ``r`` attends to the prompt and to itself, never to another response. Its
  query/key/value rows are gathered into ordinary causal sequences ``[B*R, T]`` (the unpacked layout),
  the usual fused kernel runs on them, and each packed position takes its output from the one sequence
  that owns it (the prompt from sequence 0). The prompt's attention is computed R times, the cheap part;
  its projections and MLP once.
- the LM head: the label positions of every sequence are gathered from the packed rows (the prompt's last
  position, which predicts each response's first token, feeds all R sequences).

The layout travels as the ``attention_mask`` argument megatron already threads through every stage and
through activation recomputation: a long tensor ``[B*R, T]`` (see ``PreferenceBatch.attention_layout``),
told apart from megatron's boolean masks by its dtype. Gradients flow back through ``index_select``
(summed over the sequences that read a packed position), so the numbers are the unpacked ones, up to
float summation order.
"""

from __future__ import annotations

import torch

__all__ = ["is_layout", "to_packed", "to_sequences"]


def is_layout(mask: torch.Tensor | None) -> bool:
    """Whether an ``attention_mask`` argument is a shared-prompt layout (long), not a boolean mask."""
    return mask is not None and mask.dtype == torch.long


def _indices(layout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sources, owners, destinations)`` of a layout, flat; computed once per layout tensor (every layer
    and every recomputation passes the same tensor object)."""
    cached = getattr(layout, "_shared_prompt_indices", None)
    if cached is None:
        flat = layout.reshape(-1)
        owners = torch.nonzero(flat >= 0).squeeze(-1)
        sources = torch.where(flat >= 0, flat, -1 - flat)  # ownership dropped
        cached = (sources, owners, flat.index_select(0, owners))
        layout._shared_prompt_indices = cached
    return cached


def to_sequences(packed: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """``[W, B, *rest]`` packed activations -> ``[B*R, T, *rest]`` sequences (a new tensor)."""
    rows, width = layout.shape
    flat = packed.reshape(packed.shape[0] * packed.shape[1], *packed.shape[2:])
    return flat.index_select(0, _indices(layout)[0]).view(rows, width, *packed.shape[2:])


def to_packed(sequences: torch.Tensor, layout: torch.Tensor, packed_shape: tuple[int, int]) -> torch.Tensor:
    """``[B*R, T, *rest]`` -> ``[W, B, *rest]``: each packed position from the sequence that owns it.

    Packed positions no sequence owns (padding after a row's last response) are zero.
    """
    rest = sequences.shape[2:]
    _, owners, destinations = _indices(layout)
    values = sequences.reshape(-1, *rest).index_select(0, owners)
    out = sequences.new_zeros(packed_shape[0] * packed_shape[1], *rest)
    return out.index_copy(0, destinations, values).view(*packed_shape, *rest)
