"""Batched sampling from the Megatron GPT policy, with a KV cache, under any TP x PP layout.

Layout. All B prompts x K samples form one batch of N rows. Each row is ``prompt + response`` from
position 0, right-padded — the training layout, so there is no padding *inside* a sequence and plain
causal attention is exact (no attention mask, which keeps every core-attention implementation valid:
megatron's, SDPA, Transformer Engine). Rows with prompts of different lengths are handled by starting
at the shortest prompt and, while a row is still inside its prompt, writing its prompt token instead
of the sampled one (the sample is drawn and discarded, so the random stream does not depend on
lengths). That costs ``max_prompt - min_prompt`` extra one-token steps, which is cheap for the short,
similar prompts of online RPO.

KV cache. A single-stage local-spec model (TP = PP = 1) runs
:class:`~nemo_rpo.generation.cached_decoder.CachedDecoder`: the model's own modules and weights, with keys
rotated once into a preallocated cache and GQA attention without repeated keys. Any other layout uses
megatron's ``StaticInferenceContext`` passed as ``inference_context`` to ``GPTModel.forward``; the
context keeps keys/values per layer at absolute positions, which equal the position ids here, and
megatron returns only the last position's logits, gathered over TP. Either way: one prefill over the
shortest prompt, then one-token steps. With ``shared_prefill`` (the default) the prefill runs once per
prompt and its cache is copied to the prompt's K rows. ``use_kv_cache=False`` re-runs the whole prefix
at every step (tests compare the three) and gathers the vocab-parallel logits of the last position only.

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
        shared_prefill: with the KV cache, run each prompt's prefill once and copy its cache to its K
            rows (the same numbers as one prefill per row, K times fewer prefill FLOPs).
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
        runner = _DecoderRunner(chunk, rows, total, repeats)
    else:
        runner = _StageRunner(chunk, rows, total, cfg.use_kv_cache, repeats)
    end = int(lengths.min())
    workspace: dict = {}  # select_tokens' [N, V] buffers, reused by every step
    try:
        with torch.no_grad():
            for pos in range(int(lengths.min()), total):
                logits = runner.next_token_logits(tokens, pos)
                uniforms = draw_uniforms(generator, rows, cfg) if generator is not None else None
                step_tokens, step_logps = (None, None)
                if logits is not None:
                    step_tokens, step_logps = select_tokens(logits, uniforms, cfg, vocab_size=vocab_size,
                                                           workspace=workspace)  # fmt: skip
                step_tokens = _from_last_stage(step_tokens, (rows,), torch.long, runner.device)
                write = (pos >= lengths) & ~finished & (pos < stops)
                tokens[write, pos] = step_tokens[write]
                generated[write, pos] = True
                if step_logps is not None:
                    logps[write, pos] = step_logps.cpu()[write]
                finished |= write & (step_tokens == eos_id)
                end = pos + 1
                if bool(((pos + 1 >= lengths) & (finished | (pos + 1 >= stops))).all()):
                    break
    finally:
        runner.close()
        chunk.train(was_training)

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


class _DecoderRunner:
    """:class:`CachedDecoder` behind the :class:`_StageRunner` interface (one stage, KV cache)."""

    is_first = is_last = True

    def __init__(self, chunk: torch.nn.Module, rows: int, total: int, repeats: int) -> None:
        self.decoder = CachedDecoder(chunk, rows, total)
        self.device = self.decoder.device
        self.repeats = repeats

    def next_token_logits(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """Full-vocabulary logits ``[N, V]`` predicting position ``pos``."""
        if self.decoder.length == 0:
            return self.decoder.prefill(tokens[:: self.repeats, :pos], self.repeats)
        assert pos == self.decoder.length + 1
        return self.decoder.step(tokens[:, pos - 1])

    def close(self) -> None:
        """Drop the KV cache."""
        self.decoder = None


class _StageRunner:
    """Runs this pipeline stage for one generation step and moves activations between stages.

    With ``repeats > 1`` and the KV cache, the prefill runs on every ``repeats``-th row (one per prompt)
    and its cache is then copied to the prompt's rows.
    """

    def __init__(
        self, chunk: torch.nn.Module, rows: int, total: int, use_kv_cache: bool, repeats: int = 1
    ) -> None:
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

    def next_token_logits(self, tokens: torch.Tensor, pos: int) -> torch.Tensor | None:
        """Full-vocabulary logits ``[N, V]`` predicting position ``pos`` (last stage; None elsewhere)."""
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
