"""Worker for test_rpo_model.py: ``save RUN OUT TP`` trains 2 steps and saves; ``load RUN OUT TP`` loads.

Either way it then writes ``OUT/<mode>.pt`` (every response's log-prob, the step) and exports the model
to ``OUT/hf_<mode>`` (at TP > 1 through a saved checkpoint and the one-process converter).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from nemo_rpo import LossConfig, ModelConfig, OptimConfig, ParallelConfig, RPOModel
from nemo_rpo.config.schema import DataConfig
from nemo_rpo.data import default_train_path, load_preference_dataset

mode, run, out, tp = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
model = RPOModel(ModelConfig(hidden_size=32, ffn_hidden_size=64, max_seq_len=64), ParallelConfig(tp=tp),
                 OptimConfig(lr=1e-2, warmup_steps=0), LossConfig(eta=10.0), max_steps=10, micro_batch_size=4,
                 seed=0 if mode == "save" else 1)  # fmt: skip
examples = load_preference_dataset(default_train_path(4), DataConfig(), model.tokenizer, k=4,
                                   max_seq_len=64).examples[:16]  # fmt: skip
if mode == "save":
    ref = model.reference_logps(model.shard(examples))
    for step in range(2):
        model.train_step(model.shard(examples[step * 8 : step * 8 + 8]), ref_logps=ref)
    model.save(run)
else:
    model.load(run)
logps = model.reference_logps(model.shard(examples))
model.export_hf(out / f"hf_{mode}")
if model.info.rank == 0:
    torch.save({"logps": logps, "step": model.step}, out / f"{mode}.pt")
