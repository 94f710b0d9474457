"""The learnt reward model: the policy's Megatron GPT trunk with a scalar head on the last pipeline stage.

``GPTRewardModel`` is a ``GPTModel`` whose vocabulary projection is replaced by a pass-through, so the
last stage's decoder output (after the final norm) reaches a ``Linear(hidden, 1)`` head applied at each
sequence's last real token (the response's ``eos``). Everything else is the policy's: the same
``TransformerConfig``, layer ``ModuleSpec``, padded vocabulary and checkpoint keys for the trunk
(``embedding.*``, ``decoder.*``), so TP/PP sharding, megatron DDP, the optimizer and ``dist_checkpointing``
treat it like the policy. The head is replicated across TP ranks: its input, the final hidden state,
is already identical on every TP rank, so each rank computes the same head gradient and nothing needs
reducing. Its checkpoint keys are ``rm_head.weight`` ``[1, hidden]`` and ``rm_head.bias`` ``[1]``.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule

from nemo_rpo.config.schema import ConfigError, ModelConfig, ParallelConfig
from nemo_rpo.models.gpt import build_transformer_config, layer_spec, padded_vocab_size
from nemo_rpo.models.init import layout_invariant_init_

__all__ = ["GPTRewardModel", "build_reward_model", "sequence_lengths"]


class _PassHiddenStates(torch.nn.Module):
    """Stands in for GPTModel's output layer: returns the final hidden states instead of logits."""

    sequence_parallel = False

    def forward(self, hidden_states: torch.Tensor, weight=None, runtime_gather_output=None):  # noqa: ANN001
        return hidden_states, None


class GPTRewardModel(GPTModel):
    """``GPTModel`` + scalar head. Takes ``GPTModel``'s constructor arguments; never ties embeddings.

    The vocabulary projection that ``GPTModel.__init__`` builds on the last stage is dropped right
    away (a transient ``[V / tp, hidden]`` allocation while building).
    """

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - GPTModel's signature
        kwargs["share_embeddings_and_output_weights"] = False  # there is no output layer to tie
        super().__init__(*args, **kwargs)
        if self.config.sequence_parallel:
            raise ConfigError(
                "reward model: sequence_parallel is not supported (the head needs full sequences)"
            )
        if self.post_process:
            self.output_layer = _PassHiddenStates()
            # Where megatron put the trunk's weights (local-spec norms still need the caller's .cuda()).
            device = "cpu" if self.config.use_cpu_initialization else torch.cuda.current_device()
            self.rm_head = torch.nn.Linear(
                self.config.hidden_size, 1, bias=True, device=device, dtype=self.config.params_dtype
            )
            with torch.no_grad():
                self.config.init_method(self.rm_head.weight)
                self.rm_head.bias.zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        sequence_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of right-padded sequences.

        Args:
            input_ids: ``[b, s]`` tokens (ignored by non-first pipeline stages).
            position_ids: ``[b, s]``.
            attention_mask: ``None`` for plain causal attention.
            sequence_lengths: ``[b]`` real tokens per row; the head reads position ``length - 1``.

        Returns:
            ``[b]`` fp32 scores on the last pipeline stage; on other stages the stage's output
            activation ``[s, b, h]`` for the pipeline schedule to send on.
        """
        hidden = super().forward(input_ids, position_ids, attention_mask)
        if not self.post_process:
            return hidden
        # GPTModel returns [b, s, h] (transposed from [s, b, h]) from the pass-through output layer.
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, sequence_lengths.to(hidden.device) - 1]
        return self.rm_head(last).squeeze(-1).float()

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        # GPTModel/LanguageModule only add output-layer tying and padding rules; there is no output layer.
        return MegatronModule.sharded_state_dict(self, prefix, sharded_offsets, metadata)


def build_reward_model(
    model: ModelConfig, parallel: ParallelConfig, vocab_size: int, *, init_seed: int | None = None
) -> GPTRewardModel:
    """Build this rank's stage of the reward model (call after ``init_distributed``).

    Mirrors :func:`nemo_rpo.models.gpt.build_gpt_model`: same config translation, layer spec and vocabulary
    padding, so a policy and a reward model of one ``ModelConfig`` share their trunk's shape and keys.

    Args:
        model: the trunk's shape (``untie_embeddings_and_output_weights`` is moot: no output layer).
        parallel: TP/PP sizes (must match the initialised megatron groups).
        vocab_size: the tokenizer's vocabulary; padded with :func:`~nemo_rpo.models.gpt.padded_vocab_size`.
        init_seed: draw every weight matrix (the head's too) layout-independently from this seed.
    """
    if parallel_state.get_tensor_model_parallel_world_size() != parallel.tp or (
        parallel_state.get_pipeline_model_parallel_world_size() != parallel.pp
    ):
        raise ConfigError(
            "parallel: the model-parallel groups do not match parallel.tp/pp; call init_distributed first"
        )
    config = build_transformer_config(model, parallel)
    rm = GPTRewardModel(
        config=config,
        transformer_layer_spec=layer_spec(model),
        vocab_size=padded_vocab_size(vocab_size, model, parallel),
        max_sequence_length=model.max_seq_len,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        position_embedding_type=model.position_embedding_type,
        rotary_percent=model.rotary_percent,
        rotary_base=model.rotary_base,
    )
    if init_seed is not None:
        layout_invariant_init_(rm, config, init_seed)
    return rm


def sequence_lengths(loss_mask: torch.Tensor) -> torch.Tensor:
    """``[b]`` real tokens per row of a collated batch: the last response label at ``j`` means ``j + 2``.

    ``labels[t]`` is token ``t + 1``, so the last labelled position ``j`` holds the second-to-last token.
    Padding cannot be told from ``input_ids`` alone (Hugging Face tokenizers often pad with ``eos``).
    """
    width = loss_mask.shape[-1]
    positions = torch.arange(1, width + 1, device=loss_mask.device)
    last = (positions * (loss_mask > 0)).max(dim=-1).values  # j + 1, or 0 for a row without labels
    return (last + 1).clamp(min=1, max=width)
