"""Batched sampling from the Megatron GPT policy, with a KV cache, under any TP x PP layout.

Layout. All B prompts x K samples form one batch of N rows. Each row is ``prompt + response`` from
column 0, right-padded: the training layout. Randomness is one uniform per row and *column*, drawn
column by column from the shortest prompt's end, so row ``i``'s token at column ``c`` uses the same
draw whichever path computes it and however the prompts' lengths differ.

KV cache. A single-stage local-spec model (TP = PP = 1) runs
:class:`~nemo_rpo.generation.cached_decoder.CachedDecoder`: the model's own modules and weights, with keys
rotated once into a preallocated cache and GQA attention without repeated keys. Prompts of different
lengths are left-padded into its one prefill (pad keys masked, RoPE positions counted from each prompt's
first token), after which every row advances from its own prompt's end: one step per sampled token.
Any other layout uses megatron's ``StaticInferenceContext`` passed as ``inference_context`` to
``GPTModel.forward``; the context keeps keys/values per layer at absolute positions, which equal the
position ids here, and megatron returns only the last position's logits, gathered over TP. That path
has no attention mask, so it starts at the shortest prompt and, while a row is still inside its prompt,
writes its prompt token instead of the sampled one: ``max_prompt - min_prompt`` extra one-token steps.
With ``shared_prefill`` (the default) the prefill runs once per prompt and its cache serves the prompt's
K rows (kept once where the cached decoder attends by products, else copied to each row). ``use_kv_cache=False`` re-runs the whole prefix at every step, column by column (tests
compare the three) and gathers the vocab-parallel logits of the last position only.

Parallelism. Pipeline stages pass the step's hidden states ``[s, N, h]`` with point-to-point
send/recv; the last stage samples, and the tokens are broadcast from TP rank 0 of the last stage to its
TP peers and then over the pipeline group, so every rank holds identical tokens. The log-probs are
broadcast the same way once at the end. Every rank draws the same uniforms from its own (identically
seeded) generator, so generators stay in step across ranks.

The training weights are used in place under ``torch.no_grad()``; chunks are put in eval mode (dropout
off; megatron's inference path needs it) and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.utils import get_attr_wrapped_model

from nemo_rpo.config.schema import GenerationConfig
from nemo_rpo.generation.base import GenerationOutput
from nemo_rpo.generation.cached_decoder import CachedDecoder, unsupported
from nemo_rpo.generation.sampling import draw_uniforms, select_tokens

__all__ = ["MegatronGenerator", "generate"]


class MegatronGenerator:
    """:class:`~nemo_rpo.generation.base.ResponseGenerator` over the policy's model chunks (no copy)."""

    def __init__(
        self,
        model: torch.nn.Module | Sequence[torch.nn.Module],
        cfg: GenerationConfig,
        *,
        eos_id: int,
        pad_id: int,
        vocab_size: int,
    ) -> None:
        """Args: see :func:`generate`."""
        self.model = model
        self.cfg = cfg
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.vocab_size = vocab_size

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_samples: int, generator: torch.Generator | None
    ) -> GenerationOutput:
        """Sample ``num_samples`` responses per prompt; see :func:`generate`."""
        return generate(self.model, prompt_ids, self.cfg, num_samples=num_samples, eos_id=self.eos_id,
                        pad_id=self.pad_id, vocab_size=self.vocab_size, generator=generator)  # fmt: skip


def generate(
    model: torch.nn.Module | Sequence[torch.nn.Module],
    prompt_ids: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    num_samples: int,
    eos_id: int,
    pad_id: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
    shared_prefill: bool = True,
    cached_decoder: bool = True,
) -> GenerationOutput:
    """Sample ``num_samples`` responses for every prompt from this rank's stage of the GPT policy.

    Collective over the model-parallel group: every TP/PP rank calls it with the same arguments (and an
    identically seeded ``generator``) and gets the same output.

    Args:
        model: the stage's model chunk, or the list of chunks as the training schedule takes it (one
            chunk: virtual pipeline stages are not supported). DDP / Float16Module wrappers are fine.
        prompt_ids: B prompts as token ids, each non-empty (``bos`` included when the tokenizer has one).
        cfg: temperature (0 = greedy), top_k, top_p, max_new_tokens, use_kv_cache.
        num_samples: K responses per prompt.
        eos_id: generation of a row stops after this token.
        pad_id: fills ``tokens`` after a row's end.
        vocab_size: the tokenizer's vocabulary; the model's padding rows are never sampled.
        generator: CPU generator for the draws (see
            :func:`~nemo_rpo.generation.sampling.sampling_generator`); ignored and optional when greedy.
        shared_prefill: with the KV cache, run each prompt's prefill once for its K rows (the same
            numbers as one prefill per row, K times fewer prefill FLOPs); the cached decoder then keeps
            the prompt's keys and values once where it attends by products (fp32 on the CPU), else
            copies them to the K rows.
        cached_decoder: with the KV cache, use :class:`~nemo_rpo.generation.cached_decoder.CachedDecoder`
            where it applies (TP = PP = 1, plain self-attention; megatron's inference path otherwise).

    Returns:
        A :class:`GenerationOutput` on the CPU; its ``logps`` are the policy's (temperature 1, unfiltered).

    Raises:
        ValueError: empty prompts, ids outside the vocabulary, a sequence longer than the model allows,
            a missing generator, or several model chunks.
    """
    chunk = _single_chunk(model)
    if not prompt_ids or num_samples < 1:
        raise ValueError(f"generate: need at least one prompt and num_samples >= 1, got {len(prompt_ids)} "
                         f"prompts and num_samples={num_samples}")  # fmt: skip
    if cfg.temperature > 0 and generator is None:
        raise ValueError("generate: sampling with temperature > 0 needs an explicit torch.Generator")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0 or min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"generate: prompt {i} is empty or has ids outside [0, {vocab_size})")
    max_seq_len = get_attr_wrapped_model(chunk, "max_sequence_length")
    lengths = torch.tensor([len(ids) for ids in prompt_ids]).repeat_interleave(num_samples)
    total = int(lengths.max()) + cfg.max_new_tokens
    if total > max_seq_len:
        raise ValueError(f"generate: the longest prompt ({int(lengths.max())} tokens) + max_new_tokens "
                         f"({cfg.max_new_tokens}) exceeds the model's max_seq_len ({max_seq_len})")  # fmt: skip

    rows = lengths.shape[0]
    tokens = torch.full((rows, total), pad_id, dtype=torch.long)
    for i, ids in enumerate(prompt_ids):
        tokens[i * num_samples : (i + 1) * num_samples, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    logps = torch.zeros(rows, total, dtype=torch.float32)
    generated = torch.zeros(rows, total, dtype=torch.bool)
    finished = torch.zeros(rows, dtype=torch.bool)
    stops = lengths + cfg.max_new_tokens  # a row's last position is stops - 1

    was_training = chunk.training
    chunk.eval()
    repeats = num_samples if shared_prefill else 1
    if cfg.use_kv_cache and cached_decoder and unsupported(chunk) is None:
        runner = _DecoderRunner(chunk, lengths, total, repeats)
    else:
        runner = _StageRunner(chunk, lengths, total, cfg.use_kv_cache, repeats)
    draws = _ColumnDraws(generator, cfg, first=int(lengths.min()), total=total, rows=rows)
    row_ids = torch.arange(rows)
    workspace: dict = {}  # select_tokens' [N, V] buffers, reused by every step
    try:
        with torch.no_grad():
            for step in range(total - int(lengths.min())):
                cols = runner.columns(step)  # [N]: the column each row's logits predict
                logits = runner.next_token_logits(tokens, cols)
                uniforms = draws.at(cols)
                step_tokens, step_logps = (None, None)
                if logits is not None:
                    step_tokens, step_logps = select_tokens(logits, uniforms, cfg, vocab_size=vocab_size,
                                                           workspace=workspace)  # fmt: skip
                step_tokens = _from_last_stage(step_tokens, (rows,), torch.long, runner.device)
                write = (cols >= lengths) & ~finished & (cols < stops)
                at = (row_ids[write], cols[write])
                tokens[at] = step_tokens[write]
                generated[at] = True
                if step_logps is not None:
                    logps[at] = step_logps.cpu()[write]
                finished |= write & (step_tokens == eos_id)
                if bool(((cols + 1 >= lengths) & (finished | (cols + 1 >= stops))).all()):
                    break
    finally:
        runner.close()
        chunk.train(was_training)

    end = int((lengths + generated.sum(dim=1)).max())
    logps = _from_last_stage(logps[:, :end].to(runner.device) if runner.is_last else None,
                             (rows, end), torch.float32, runner.device)  # fmt: skip
    mask = generated[:, :end]
    return GenerationOutput(tokens=tokens[:, :end], response_mask=mask.float(), logps=logps * mask,
                            prompt_lengths=lengths, response_lengths=mask.sum(dim=1),
                            num_samples=num_samples)  # fmt: skip


def _single_chunk(model: torch.nn.Module | Sequence[torch.nn.Module]) -> torch.nn.Module:
    if isinstance(model, torch.nn.Module):
        return model
    chunks = list(model)
    if len(chunks) != 1:
        raise ValueError(f"generate: expected one model chunk per rank, got {len(chunks)} "
                         "(virtual pipeline stages are not supported)")  # fmt: skip
    return chunks[0]


class _ColumnDraws:
    """The sampling uniforms, one ``[N]`` draw per column in column order: row ``i``'s token at column
    ``c`` uses draw ``c``'s entry ``i`` whichever step computes it, so runners that advance the rows
    column by column or each from its own prompt end sample alike."""

    def __init__(
        self, generator: torch.Generator | None, cfg: GenerationConfig, first: int, total: int, rows: int
    ) -> None:
        self.generator, self.cfg = generator, cfg
        self.first = first  # the column of table[0]
        self.table = torch.empty(total - first, rows, dtype=torch.float64)  # [columns, N], filled lazily
        self.filled = 0
        self.row_ids = torch.arange(rows)

    def at(self, cols: torch.Tensor) -> torch.Tensor | None:
        """``[N]`` float64: row ``i``'s uniform for column ``cols[i]`` (None when greedy or no generator)."""
        if self.generator is None or self.cfg.temperature == 0:
            return None
        while self.first + self.filled <= int(cols.max()):
            self.table[self.filled] = draw_uniforms(self.generator, self.table.shape[1], self.cfg)
            self.filled += 1
        return self.table[cols - self.first, self.row_ids]


class _DecoderRunner:
    """:class:`CachedDecoder` behind the :class:`_StageRunner` interface (one stage, KV cache).

    Prompts of different lengths are left-padded into one prefill (pad columns masked, positions from
    each prompt's first token), so every row then advances from its own prompt's end: one step per
    sampled token, none spent feeding the longer prompts token by token."""

    is_first = is_last = True

    def __init__(self, chunk: torch.nn.Module, lengths: torch.Tensor, total: int, repeats: int) -> None:
        self.decoder = CachedDecoder(chunk, lengths.shape[0], total)
        self.device = self.decoder.device
        self.lengths, self.repeats = lengths, repeats
        self.row_ids = torch.arange(lengths.shape[0])

    def columns(self, step: int) -> torch.Tensor:
        """``[N]``: the column each row predicts at ``step`` (its own prompt's end + ``step``)."""
        return self.lengths + step

    def next_token_logits(self, tokens: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits ``[N, V]``, row ``i``'s predicting column ``cols[i]``."""
        if self.decoder.length == 0:
            lengths = self.lengths[:: self.repeats]
            width = int(lengths.max())
            pads = width - lengths
            # Left-pad: prompt b's tokens into columns pads[b]..width-1 (its pad columns repeat its
            # first token, any valid id: they are masked).
            source = (torch.arange(width)[None, :] - pads[:, None]).clamp_min(0)
            prompts = tokens[:: self.repeats].gather(1, source)
            return self.decoder.prefill(prompts, self.repeats, pads)
        return self.decoder.step(tokens[self.row_ids, cols - 1])

    def close(self) -> None:
        """Drop the KV cache."""
        self.decoder = None


class _StageRunner:
    """Runs this pipeline stage for one generation step and moves activations between stages.

    With ``repeats > 1`` and the KV cache, the prefill runs on every ``repeats``-th row (one per prompt)
    and its cache is then copied to the prompt's rows.
    """

    def __init__(
        self, chunk: torch.nn.Module, lengths: torch.Tensor, total: int, use_kv_cache: bool, repeats: int = 1
    ) -> None:
        rows = lengths.shape[0]
        self.start = int(lengths.min())  # every row advances column by column from the shortest prompt
        self.chunk = chunk
        self.config = get_attr_wrapped_model(chunk, "config")
        self.set_input_tensor = get_attr_wrapped_model(chunk, "set_input_tensor")
        self.device = next(chunk.parameters()).device
        self.rows = rows
        self.total = total
        self.repeats = repeats if use_kv_cache else 1
        self.is_first = parallel_state.is_pipeline_first_stage()
        self.is_last = parallel_state.is_pipeline_last_stage()
        self.context = StaticInferenceContext(rows // self.repeats, total) if use_kv_cache else None
        self.fed = 0  # positions already in the KV cache

    def columns(self, step: int) -> torch.Tensor:
        """``[N]``: the column every row predicts at ``step`` (the shortest prompt's end + ``step``)."""
        return torch.full((self.rows,), self.start + step)

    def next_token_logits(self, tokens: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
        """Full-vocabulary logits ``[N, V]`` predicting column ``pos = cols[0]``, the same for every row (last
        stage; None elsewhere)."""
        pos = int(cols[0])
        begin = self.fed if self.context is not None else 0
        prefill_once = self.context is not None and begin == 0 and self.repeats > 1
        if prefill_once:
            tokens = tokens[:: self.repeats]
        rows = tokens.shape[0]
        input_ids = tokens[:, begin:pos].to(self.device)
        position_ids = torch.arange(begin, pos, device=self.device).expand(rows, -1)
        if self.context is not None:
            self.context.sequence_len_offset = begin
            if begin > 0:  # every step after the prefill feeds one token per row
                self.context.enable_decode_mode()
        if not self.is_first:
            hidden = torch.empty(pos - begin, rows, self.config.hidden_size,
                                 dtype=self.config.pipeline_dtype or self.config.params_dtype, device=self.device)  # fmt: skip
            dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            self.set_input_tensor(hidden)
        output = self.chunk(input_ids, position_ids, None, inference_context=self.context,
                            runtime_gather_output=True if self.context is not None else None)  # fmt: skip
        self.fed = pos
        if prefill_once:
            self._expand_cache()
        if not self.is_last:
            dist.send(output.contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
            return None
        if self.context is not None:  # megatron materialised only the last position, gathered over TP
            logits = output[:, -1].float()
            return logits.repeat_interleave(self.repeats, dim=0) if prefill_once else logits
        return tensor_parallel.gather_from_tensor_model_parallel_region(output[:, -1].contiguous()).float()

    def _expand_cache(self) -> None:
        """Copy each prompt's cached keys/values (``[s, b, n, d]`` per layer) to its ``repeats`` rows."""
        expanded = StaticInferenceContext(self.rows, self.total)
        for layer, (keys, values) in self.context.key_value_memory_dict.items():
            expanded.key_value_memory_dict[layer] = (keys.repeat_interleave(self.repeats, dim=1),
                                                     values.repeat_interleave(self.repeats, dim=1))  # fmt: skip
        self.context = expanded

    def close(self) -> None:
        """Drop the KV cache and the received activation."""
        self.context = None
        if not self.is_first:
            self.set_input_tensor(None)


def _from_last_stage(
    tensor: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``tensor`` from TP rank 0 of the last pipeline stage, on every model-parallel rank (on the CPU)."""
    if parallel_state.is_pipeline_last_stage():
        assert tensor is not None
        tensor = tensor.to(device=device, dtype=dtype).contiguous()
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            dist.broadcast(tensor, src=parallel_state.get_tensor_model_parallel_src_rank(),
                           group=parallel_state.get_tensor_model_parallel_group())  # fmt: skip
    else:
        tensor = torch.empty(shape, dtype=dtype, device=device)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(tensor, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())  # fmt: skip
    return tensor.cpu()
