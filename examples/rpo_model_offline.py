"""Offline RPO (rpo_bwd, K=4) from your own loop with ``nemo_rpo.RPOModel``, on the bundled synthetic data.

    python examples/rpo_model_offline.py                                   # CPU, one process
    torchrun --nproc_per_node=2 examples/rpo_model_offline.py parallel.tp=2
Overrides name a component config's field: ``parallel.tp=2 optim.lr=1e-3 loss.name=rpo_sqloo steps=30``.
"""

import ast
import sys

from nemo_rpo import LossConfig, ModelConfig, OptimConfig, ParallelConfig, RPOModel
from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import default_train_path, load_preference_dataset

# nemo-rpo-train's embedded default (conf/model/tiny.yaml, conf/loss/rpo_bwd.yaml), 40 steps of 32 prompts
over = {"model": {"ffn_hidden_size": 176, "max_seq_len": 128}, "parallel": {}, "optim": {}, "loss": {"eta": 10.0},
        "": {"steps": 40, "batch": 32}}  # fmt: skip
for arg in sys.argv[1:]:
    key, value = arg.split("=", 1)
    section, _, name = key.rpartition(".")
    try:
        over[section][name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        over[section][name] = value
steps, batch = over[""]["steps"], over[""]["batch"]

model = RPOModel(ModelConfig(**over["model"]), ParallelConfig(**over["parallel"]), OptimConfig(**over["optim"]),
                 LossConfig(**over["loss"]), max_steps=steps)  # fmt: skip
data = load_preference_dataset(default_train_path(4), DataConfig(), model.tokenizer, k=4,
                               max_seq_len=model.model_cfg.max_seq_len).examples  # fmt: skip
ref_logps = model.reference_logps(model.shard(data))  # pi_ref := the initial policy (Alg. 1, line 1)
for step in range(steps):
    start = step * batch % len(data)  # the data in order, epoch after epoch
    metrics = model.train_step(model.shard(data[start : start + batch]), ref_logps=ref_logps)
    if model.is_logging_rank:
        print(
            f"step {metrics['step']:3d} loss {metrics['loss']:.4f} acc {metrics['accuracy']:.3f}", flush=True
        )
