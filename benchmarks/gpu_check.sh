#!/usr/bin/env bash
# GPU check (issue 20, item 7): bf16 training step time and MFU of a ~1B Llama-shaped policy (local spec,
# and the Transformer Engine spec where it imports), and sampling tokens/s. Under 8 minutes on one H100.
# Saves the printed lines and a JSON record under benchmarks/results/gpu_check-<UTC time>.{log,json}.
#   bash benchmarks/gpu_check.sh               # on a machine with one GPU
#   bash benchmarks/gpu_check.sh --dry-run     # tiny model on the CPU: checks the script
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${GPU_CHECK_OUT:-benchmarks/results/gpu_check-$stamp}
mkdir -p "$(dirname "$out")"
{
  echo "# $(date -u) $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  timeout 480 python benchmarks/gpu_check.py --out "$out.json" "$@"
} 2>&1 | grep -v -i "warn" | tee "$out.log"
echo "saved: $out.log $out.json"
