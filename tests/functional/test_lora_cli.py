"""LoRA runs end to end: resume repeats the uninterrupted run bitwise (offline; iterative online, whose
iteration start merges the adapters into the base), and ``mcore-to-hf`` exports merged weights and a PEFT
adapter directory that gives the merged model's logits when applied to the exported base in ``transformers``."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_exact_resume import SMALL, TOY, _assert_identical, _metrics, _run

pytestmark = pytest.mark.functional

LORA = ["model.lora.rank=4", "model.lora.alpha=8", "optim.lr=1e-2"]


def test_offline_lora_resume_is_bitwise_and_saves_adapters_only(tmp_path: Path) -> None:
    args = [*SMALL, *LORA, "trainer.max_steps=6", "logging.tensorboard=false"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(full, args).returncode == 0
    assert _run(cut, args, kill_at_save=4).returncode == 137  # dies saving step 4: resumes from step 2
    proc = _run(cut, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    _assert_identical(_metrics(cut), _metrics(full), ("loss", "grad_norm", "accuracy", "lr"))
    ckpt = full / "checkpoints" / "step_00000006"
    assert json.loads((ckpt / "COMPLETE").read_text())["part"] == "adapters"
    assert json.loads((ckpt / "extra.json").read_text())["lora_base"] == {"seed": 1234}


def test_iterative_online_lora_merges_and_resumes_bitwise(tmp_path: Path) -> None:
    """Alg. 4 with 2 iterations of 2 steps: step 3 merges the adapters (pi_ref := pi). Killed while saving
    step 3 (resumes at the iteration boundary, merges again) and step 4 (resumes mid-iteration: the
    merged base comes back from the checkpoint's pointer)."""
    args = [*TOY, *SMALL, *LORA, "checkpoint.save_interval=1", "trainer.max_steps=4", "schedule.iterations=2",
            "logging.tensorboard=false"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = _run(full, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (full / "reference").exists()  # no second model: the reference is the adapters switched off
    base = full / "lora_base" / "checkpoints" / "step_00000002"
    assert (base / "COMPLETE").is_file() and json.loads((base / "COMPLETE").read_text())["part"] == "base"
    pointer = json.loads((full / "checkpoints" / "step_00000004" / "extra.json").read_text())["lora_base"]
    assert pointer == {"checkpoint": str(base)}
    rows = _metrics(full)
    # each iteration's first step: policy == reference (up to the sampler's own rounding of the log-probs)
    assert abs(rows[0]["kl"]) < 1e-5 and abs(rows[2]["kl"]) < 1e-5
    assert abs(rows[1]["kl"]) > 10 * max(abs(rows[0]["kl"]), abs(rows[2]["kl"]))
    assert _run(cut, args, kill_at_save=3).returncode == 137
    assert _run(cut, args, kill_at_save=4).returncode == 137
    proc = _run(cut, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 3" in proc.stdout
    _assert_identical(_metrics(cut), rows, ("loss", "grad_norm", "reward", "kl", "response_length"))


def _logits(model_dir: Path, ids: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    """``transformers`` logits; with ``adapter``, PEFT's LoRA applied by hand from the adapter files:
    module ``base_model.model.<path>`` gets ``+ lora_alpha / r * lora_B(lora_A(x))``."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    if adapter is not None:
        config = json.loads((adapter / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        modules = dict(model.named_modules())
        for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
            path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
            assert path.split(".")[-1] in config["target_modules"]

            def hook(module, inputs, output, a=a, b=b):  # noqa: ANN001, ANN202
                return output + scale * (inputs[0] @ a.t() @ b.t())

            modules[path].register_forward_hook(hook)
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-step LoRA run exported by ``mcore-to-hf --peft-out``: (merged HF dir, PEFT adapter dir)."""
    tmp = tmp_path_factory.mktemp("export")
    exp = tmp / "run"
    proc = _run(exp, [*SMALL, *LORA, "trainer.max_steps=3", "logging.tensorboard=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged, adapter = tmp / "hf", tmp / "adapter"
    convert = [sys.executable, "-m", "nemo_rpo.cli.convert", "mcore-to-hf", "--ckpt", str(exp), "--out", str(merged),
               "--peft-out", str(adapter)]  # fmt: skip
    done = subprocess.run(convert, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LoRA adapters merged" in done.stdout
    return merged, adapter


def _ids() -> torch.Tensor:
    return torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))


def test_mcore_to_hf_exports_merged_weights_and_a_peft_adapter(exported) -> None:
    merged, adapter = exported
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8.0
    assert config["base_model_name_or_path"] == str((adapter / "base").resolve())
    want = _logits(merged, _ids())
    base = _logits(adapter / "base", _ids())
    got = _logits(adapter / "base", _ids(), adapter)
    assert (want - base).abs().max() > 1e-3  # the adapters trained: merged differs from the base
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="peft is not installed (not a dependency)"
)
def test_peft_loads_the_exported_adapter(exported) -> None:
    """The PEFT library itself (where installed; it is not a dependency): ``PeftModel.from_pretrained`` on
    the exported base gives the merged model's logits."""
    import peft
    from transformers import AutoModelForCausalLM

    merged, adapter = exported
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    loaded = {k for k, _ in model.named_parameters() if "lora_" in k}
    assert len(loaded) == len(config["target_modules"]) * 2 * 2  # 7 HF modules x (A, B) x 2 layers
    with torch.no_grad():
        got = model(_ids()).logits
    torch.testing.assert_close(got, _logits(merged, _ids()), rtol=0, atol=1e-4)


def test_iterative_offline_lora_merges_before_regenerating_and_resumes_bitwise(tmp_path: Path) -> None:
    """Alg. 3 with 2 iterations of 3 steps: iteration 2 merges the adapters, then samples its data from the
    merged policy. Killed while saving step 4: resumes at step 3, the boundary, and merges again."""
    args = [*SMALL, *LORA, "trainer.max_steps=6", "schedule.iterations=2", "generation.max_new_tokens=8",
            "logging.tensorboard=false"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _run(full, args).returncode == 0
    assert (full / "lora_base" / "checkpoints" / "step_00000003" / "COMPLETE").is_file()
    assert _run(cut, args, kill_at_save=4).returncode == 137
    proc = _run(cut, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 3" in proc.stdout
    rows = _metrics(cut)
    assert [r["iteration"] for r in rows] == [0, 0, 0, 1, 1, 1]
    _assert_identical(rows, _metrics(full), ("loss", "grad_norm", "accuracy", "lr"))


def test_lora_from_hugging_face_resumes_from_its_pointer_and_exports_against_it(tmp_path: Path) -> None:
    """``model.init_from_hf`` + LoRA: checkpoints point at the HF directory (the resume reloads the base from
    it), and the PEFT adapter names it as its base model (no copy written); applied to it, the adapter gives
    the merged export's logits. Qwen2: q/k/v carry biases, and GQA splits B's q/k/v rows unevenly."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hf_tiny import save_tiny_hf

    hf_dir = save_tiny_hf(tmp_path / "hf", "qwen2")
    exp = tmp_path / "run"
    args = [f"model.init_from_hf={hf_dir}", *LORA, "trainer.global_batch_size=8", "logging.progress_bar=false",
            "logging.tensorboard=false", "optim.decay_style=constant", "optim.warmup_steps=0"]  # fmt: skip
    assert _run(exp, [*args, "trainer.max_steps=2"]).returncode == 0
    proc = _run(exp, [*args, "trainer.max_steps=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"initialised base weights from {hf_dir}" in proc.stdout and "at step 2" in proc.stdout
    extra = json.loads((exp / "checkpoints" / "step_00000003" / "extra.json").read_text())
    assert extra["lora_base"] == {"hf": str(hf_dir)}
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    convert = [sys.executable, "-m", "nemo_rpo.cli.convert", "mcore-to-hf", "--ckpt", str(exp), "--out", str(merged),
               "--peft-out", str(adapter)]  # fmt: skip
    done = subprocess.run(convert, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(hf_dir) and not (adapter / "base").exists()
    want = _logits(merged, _ids())
    assert (want - _logits(hf_dir, _ids())).abs().max() > 1e-3
    torch.testing.assert_close(_logits(hf_dir, _ids(), adapter), want, rtol=0, atol=1e-4)
