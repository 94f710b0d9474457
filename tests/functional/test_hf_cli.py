"""``nemo-rpo-convert`` and ``model.init_from_hf`` end to end on tiny HF models built in the test.

- hf-to-mcore with PP=2 (two processes, each saving its stage) -> mcore-to-hf is bit-exact, and
  ``transformers`` loads the result with no missing or unexpected keys;
- a training run from ``model.init_from_hf`` has the HF model's log-probs at step 0 (its cached
  reference log-probs are the policy's initial ones) and exports back to HF;
- bad input exits 2 with one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_tiny import save_tiny_hf  # noqa: E402

pytestmark = pytest.mark.functional

QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]


def _run(module: str, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def _convert(*args: str) -> subprocess.CompletedProcess:
    return _run("nemo_rpo.cli.convert", *args)


def _load_without_warnings(path: Path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


def test_pp2_import_then_export_is_bit_exact(tmp_path):
    from safetensors.torch import load_file

    hf = save_tiny_hf(tmp_path / "hf", "llama")
    proc = _convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "ckpt"), "--pp", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tp=1 pp=2" in proc.stdout
    ckpt = tmp_path / "ckpt" / "checkpoints" / "step_00000000"
    assert '"pp": 2' in (ckpt / "COMPLETE").read_text()
    proc = _convert("mcore-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    before, after = load_file(hf / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(before) == set(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name
    _load_without_warnings(tmp_path / "back")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert tok.chat_template and tok.eos_token == "</s>"


def test_training_from_hf_starts_at_the_hf_log_probs_and_exports(tmp_path):
    from nemo_rpo.config.schema import DataConfig, TokenizerConfig
    from nemo_rpo.data.preference import load_preference_dataset
    from nemo_rpo.data.tokenizer import HFTokenizer

    hf_dir = save_tiny_hf(tmp_path / "hf", "qwen2")
    exp = tmp_path / "run"
    proc = _run("nemo_rpo.train", f"model.init_from_hf={hf_dir}", f"exp_dir={exp}", "trainer.max_steps=2",
                "trainer.global_batch_size=8", *QUIET)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"initialised weights from {hf_dir}" in proc.stdout
    config = (exp / "config.yaml").read_text()
    assert "add_qkv_bias: true" in config and "num_query_groups: 2" in config and "type: hf" in config

    # The reference log-probs cached before step 1 are those of the HF model.
    ref = torch.load(exp / "reference_logps.pt", weights_only=True)["logps"]
    data_cfg = DataConfig(tokenizer=TokenizerConfig(type="hf", path=str(hf_dir)))
    dataset = load_preference_dataset(str(exp / "data" / "synthetic_k4.jsonl"), data_cfg, HFTokenizer(str(hf_dir)),
                                      k=4, max_seq_len=128)  # fmt: skip
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    worst = 0.0
    for ex in dataset.examples[:12]:
        for j, resp in enumerate(ex.response_ids):
            ids = torch.tensor([ex.prompt_ids + resp])
            with torch.no_grad():
                logps = torch.log_softmax(hf(ids).logits[0].double(), dim=-1)
            n = len(ex.prompt_ids)
            expected = sum(logps[n - 1 + t, tok].item() for t, tok in enumerate(resp))
            worst = max(worst, abs(expected - ref[ex.index, j].item()))
    assert worst < 1e-4, worst

    proc = _convert("mcore-to-hf", "--ckpt", str(exp), "--out", str(tmp_path / "trained_hf"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = _load_without_warnings(tmp_path / "trained_hf")
    assert trained.config.tie_word_embeddings and trained.config.architectures == ["Qwen2ForCausalLM"]
    moved = trained.model.layers[0].mlp.up_proj.weight - hf.model.layers[0].mlp.up_proj.weight
    assert moved.abs().max() > 0  # two optimizer steps changed the weights that were exported


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["hf-to-mcore", "--hf", "/nonexistent/dir", "--out", "x"], "/nonexistent/dir is not a directory"),
        (["mcore-to-hf", "--ckpt", "/nonexistent/run", "--out", "x"], "no complete checkpoint"),
    ],
)
def test_convert_errors_are_one_line(tmp_path, args, message):
    proc = _convert(*[a if a != "x" else str(tmp_path / "x") for a in args])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]


def test_train_rejects_a_layout_the_hf_model_cannot_take(tmp_path):
    hf_dir = save_tiny_hf(tmp_path / "hf", "llama")
    proc = _run(
        "nemo_rpo.train", f"model.init_from_hf={hf_dir}", "parallel.tp=3", f"exp_dir={tmp_path / 'r'}"
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "parallel.tp" in lines[0] and "(4)" in lines[0], proc.stderr[-2000:]
