"""A learnt Megatron reward model behind the reward protocol: ``score(prompts, responses) -> [N]``.

Loads a run directory of ``nemo-rpo-train-rm`` (its ``config.yaml`` and latest dist checkpoint) into the
megatron layout of the calling process, so it is sharded like the policy it serves: under TP/PP/DP every
rank calls :meth:`MegatronRewardModel.score` with the same inputs and gets the same rewards. The
checkpoint is layout-independent, so an RM trained at TP=1 serves at TP=2 and vice versa.

Sequences are tokenized exactly as in training (``[bos] + prompt + response + [eos]``, the prompt cut
from the left to ``data.max_prompt_len``, the response from the right to ``model.max_seq_len``), batched
into micro-batches of one shape, split over data-parallel ranks, and scored without gradients.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from nemo_rpo.config.rm_schema import RMTrainConfig, rm_config_from_dict
from nemo_rpo.config.schema import ParallelConfig
from nemo_rpo.data.batch import PreferenceBatch, collate, round_up
from nemo_rpo.data.preference import PreferenceExample, tokenize_records
from nemo_rpo.data.records import PreferenceRecord
from nemo_rpo.data.tokenizer import build_tokenizer

__all__ = ["MegatronRewardModel", "load_rm_run_config"]


def load_rm_run_config(run_dir: str | os.PathLike) -> RMTrainConfig:
    """The resolved ``RMTrainConfig`` a reward-model run saved as ``<run_dir>/config.yaml``."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a nemo-rpo-train-rm exp_dir?")
    return rm_config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


class MegatronRewardModel:
    """Scores ``(prompt, response)`` pairs with a reward model trained by ``nemo-rpo-train-rm``.

    Args:
        run_dir: the RM run's ``exp_dir``.
        micro_batch_size: sequences per forward pass.
        checkpoint: a specific checkpoint directory; ``None`` takes the latest complete one.

    Call it after ``init_distributed`` of the run it serves (it adopts that TP/PP layout); in a bare
    process it starts a one-process world itself. Collective: every rank must construct it and call
    :meth:`score` with the same inputs.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        micro_batch_size: int = 32,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        from megatron.core import parallel_state

        from nemo_rpo.distributed.launch import init_distributed
        from nemo_rpo.models.reward import build_reward_model
        from nemo_rpo.training.checkpoint import find_latest_checkpoint, load_checkpoint

        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.cfg = load_rm_run_config(run_dir)
        self.micro_batch_size = micro_batch_size
        if not torch.distributed.is_initialized() or not parallel_state.model_parallel_is_initialized():
            init_distributed(ParallelConfig(), self.cfg.trainer.seed)
        self.parallel = ParallelConfig(
            tp=parallel_state.get_tensor_model_parallel_world_size(),
            pp=parallel_state.get_pipeline_model_parallel_world_size(),
        )
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.tokenizer = build_tokenizer(self.cfg.data.tokenizer)
        vocab_size = self.cfg.model.vocab_size or self.tokenizer.vocab_size
        self.model = build_reward_model(self.cfg.model, self.parallel, vocab_size)
        if torch.cuda.is_available():
            self.model.cuda()
        path = Path(checkpoint) if checkpoint is not None else find_latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/")
        extra = load_checkpoint(path, [self.model], None, None, restore_rng=False)
        self.checkpoint = path
        self.step = int(extra["step"])
        self.model.eval()

    def _examples(self, prompts: Sequence[str], responses: Sequence[str]) -> list[PreferenceExample]:
        records = [
            PreferenceRecord(line=i + 1, prompt=p, responses=[r], rewards=None, response_fields=["response"])
            for i, (p, r) in enumerate(zip(prompts, responses))
        ]
        examples, _ = tokenize_records(records, self.tokenizer, max_prompt_len=self.cfg.data.max_prompt_len,
                                       max_seq_len=self.cfg.model.max_seq_len, truncation="truncate",
                                       path="<score>")  # fmt: skip
        return examples

    def _microbatches(self, examples: list[PreferenceExample]) -> list[PreferenceBatch]:
        """This data-parallel rank's micro-batches, every one ``[micro_batch_size, width]``.

        Rows beyond the inputs repeat the first example (their scores land past ``len(examples)`` and
        are dropped), so all ranks and micro-batches share one shape.
        """
        size = min(self.micro_batch_size, len(examples))
        num_batches = math.ceil(len(examples) / size)
        filler = examples[0]
        padded = examples + [
            PreferenceExample(len(examples) + i, filler.prompt_ids, filler.response_ids, None)
            for i in range(num_batches * size - len(examples))
        ]
        longest = max(len(ex.prompt_ids) + len(ex.response_ids[0]) for ex in padded)
        width = max(longest, min(round_up(longest), self.cfg.model.max_seq_len))
        pad_id = self.tokenizer.pad_id
        return [
            collate(padded[b * size : (b + 1) * size], pad_id, pad_to=width).to(self.device)
            for b in range(self.dp_rank, num_batches, self.dp_size)
        ]

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards of ``responses[i]`` to ``prompts[i]``: float32 ``[N]`` on the CPU, the same on every rank.

        Prompts are strings or chat-message lists (rendered as in training).
        """
        from nemo_rpo.training.reward_model import score_microbatches

        if len(prompts) != len(responses):
            raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return torch.zeros(0, dtype=torch.float32)
        examples = self._examples(prompts, responses)
        size = min(self.micro_batch_size, len(examples))
        num_rows = math.ceil(len(examples) / size) * size
        table = score_microbatches([self.model], self._microbatches(examples), num_rows)
        return table[: len(examples), 0].contiguous()

    __call__ = score
