"""Reward-model serving across layouts (run by ``_launch.run_workers`` on 2 processes; not collected).

Usage: ``python _rm_workers.py OUT_DIR``. Builds a reward model at TP=1 (DP=2), saves it as an RM run
directory (``config.yaml`` + dist checkpoint), then loads it with ``MegatronRewardModel`` under TP=1 x DP=2,
TP=2 and PP=2 and scores the same inputs; rank 0 writes ``OUT_DIR/rm_layouts.pt``. Also records the
unsharded model's own forward on the same tokens, to check serving against the model itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from nemo_rpo.config.rm_schema import RMTrainConfig
from nemo_rpo.config.schema import CheckpointConfig, DataConfig, ModelConfig, ParallelConfig
from nemo_rpo.distributed.cpu_support import prepare_megatron_import
from nemo_rpo.distributed.launch import init_distributed, teardown_distributed

SEED = 1234
PROMPTS = ["reverse: abc\n", "sort: 3 1 2\n", "upper: mdew\n", "reverse: kfqa\n", "sort: 9 9 1 4\n"] * 2
RESPONSES = ["cba", "1 2 3", "MDEW", "aqfk", "1 4 9 9", "abc", "3 1 2", "MDEX", "afqk", "1 9 4 9"]


def rm_config() -> RMTrainConfig:
    model = ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, max_seq_len=32,
                        transformer_impl="local", position_embedding_type="rope")  # fmt: skip
    return RMTrainConfig(model=model, data=DataConfig(max_prompt_len=16), checkpoint=CheckpointConfig())


def main(out: Path) -> None:
    prepare_megatron_import()
    from nemo_rpo.data.tokenizer import build_tokenizer
    from nemo_rpo.models.reward import build_reward_model
    from nemo_rpo.rewards.megatron_rm import MegatronRewardModel
    from nemo_rpo.training.builder import save_resolved_config
    from nemo_rpo.training.checkpoint import save_checkpoint

    cfg = rm_config()
    cfg.exp_dir = str(out / "rm_run")
    info = init_distributed(ParallelConfig(), SEED)
    save_resolved_config(cfg, info)
    vocab = build_tokenizer(cfg.data.tokenizer).vocab_size
    model = build_reward_model(cfg.model, ParallelConfig(), vocab, init_seed=SEED)
    save_checkpoint(cfg.exp_dir, 5, [model], None, None, {"step": 5})

    results: dict = {}
    rm = MegatronRewardModel(cfg.exp_dir, micro_batch_size=4)  # 3 micro-batches: 2 on DP rank 0, 1 on rank 1
    results["tp1_dp2"] = rm.score(PROMPTS, RESPONSES)
    results["step"] = rm.step
    examples = rm._examples(PROMPTS, RESPONSES)
    from nemo_rpo.data.batch import collate
    from nemo_rpo.models.reward import sequence_lengths

    batch = collate(examples, rm.tokenizer.pad_id)
    with torch.no_grad():
        model.eval()
        results["direct"] = model(batch.input_ids, batch.position_ids, None,
                                  sequence_lengths=sequence_lengths(batch.loss_mask))  # fmt: skip
    for name, parallel in (("tp2", ParallelConfig(tp=2)), ("pp2", ParallelConfig(pp=2))):
        init_distributed(parallel, SEED)
        results[name] = MegatronRewardModel(cfg.exp_dir, micro_batch_size=3).score(PROMPTS, RESPONSES)
        results[f"{name}_empty"] = MegatronRewardModel(cfg.exp_dir).score([], [])
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {k: v for k, v in results.items() if k != "step"})
    results["all_ranks"] = gathered
    if info.rank == 0:
        torch.save(results, out / "rm_layouts.pt")
    teardown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
