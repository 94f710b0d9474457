#!/usr/bin/env bash
# Offline RPO on one node with torchrun: TP=2 x PP=2 on 4 processes (CPU with gloo, or 4 GPUs).
# Config: conf/train.yaml + the overrides below. Extra Hydra overrides are passed through: "$@".
set -euo pipefail
NPROC=${NPROC:-4}
# torchrun sets OMP_NUM_THREADS=1 for several processes; on CPU give each rank its share.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
torchrun --standalone --nproc_per_node="$NPROC" -m nemo_rpo.train \
  loss=rpo_bwd loss.beta=0.1 loss.eta=10 k=4 \
  parallel.tp=2 parallel.pp=2 \
  trainer.max_steps=100 exp_dir=runs/torchrun_tp2_pp2 "$@"
