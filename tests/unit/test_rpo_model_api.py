"""``nemo_rpo.RPOModel``: each method against the functions it wraps, and the round trips it promises."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_rpo.config.schema import DataConfig, LossConfig, ModelConfig, OptimConfig
from nemo_rpo.data.preference import tokenize_records
from nemo_rpo.data.records import read_preference_records
from nemo_rpo.data.synthetic import default_train_path


def _model(seed: int = 0, **kw):
    from nemo_rpo import RPOModel

    return RPOModel(ModelConfig(hidden_size=32, ffn_hidden_size=64, max_seq_len=64), None,
                    OptimConfig(lr=1e-2, warmup_steps=0), LossConfig(name="rpo_bwd", eta=10.0),
                    max_steps=10, micro_batch_size=4, seed=seed, **kw)  # fmt: skip


def _examples(model, n: int = 16):
    records, _ = read_preference_records(default_train_path(4), k=4, fmt="auto", require_rewards=True,
                                         split="train", renames={})  # fmt: skip
    examples, _ = tokenize_records(records[:n], model.tokenizer, max_prompt_len=DataConfig().max_prompt_len,
                                   max_seq_len=64, truncation="truncate", path="synthetic")  # fmt: skip
    return examples


def test_step_loss_equals_the_forward_only_loss_and_training_lowers_it(one_process):
    """train_step reports the loss loss_and_metrics computes at the same weights; 6 steps on one batch lower it."""
    model = _model()
    examples = _examples(model)
    ref = model.reference_logps(examples)
    assert ref.shape == (16, 4) and torch.isfinite(ref).all()
    before = model.loss_and_metrics(examples, ref)
    step = model.train_step(examples, ref_logps=ref)
    assert step["step"] == 1 and not step["skipped"] and math.isfinite(step["grad_norm"])
    assert step["loss"] == pytest.approx(before["loss"], rel=1e-6)
    assert step["accuracy"] == pytest.approx(before["accuracy"])
    for _ in range(5):
        model.train_step(examples, ref_logps=ref)
    after = model.loss_and_metrics(examples, ref)
    assert after["loss"] < 0.9 * before["loss"], (before["loss"], after["loss"])
    # at the initial weights the policy is the reference: every implicit reward is 0
    assert before["implicit_margin"] == pytest.approx(0.0, abs=1e-6)


def test_save_then_load_gives_identical_logps_and_the_same_next_step(tmp_path, one_process):
    """A model of other initial weights, loaded from the checkpoint, has the saved log-probs exactly, the
    saved step, and takes the same next step (optimizer and schedule restored)."""
    trained = _model(seed=0)
    examples = _examples(trained)
    ref = trained.reference_logps(examples)
    for _ in range(2):
        trained.train_step(examples[:8], ref_logps=ref)
    path = trained.save(tmp_path / "run")
    assert path.name == "step_00000002" and (tmp_path / "run" / "config.yaml").is_file()
    saved = trained.reference_logps(examples)

    fresh = _model(seed=1)
    assert not torch.equal(fresh.reference_logps(examples), saved)  # other weights before loading
    assert fresh.load(tmp_path / "run") == 2 and fresh.step == 2
    torch.testing.assert_close(fresh.reference_logps(examples), saved, rtol=0, atol=0)
    nxt_saved = trained.train_step(examples[8:], ref_logps=ref)
    nxt_loaded = fresh.train_step(examples[8:], ref_logps=ref)
    assert (
        (nxt_loaded["step"], nxt_loaded["lr"]) == (nxt_saved["step"], nxt_saved["lr"]) == (3, nxt_saved["lr"])
    )
    assert nxt_loaded["loss"] == nxt_saved["loss"] and nxt_loaded["grad_norm"] == nxt_saved["grad_norm"]
    torch.testing.assert_close(
        fresh.reference_logps(examples), trained.reference_logps(examples), rtol=0, atol=0
    )


def test_generate_samples_k_responses_reproducibly_with_the_policy_logps(one_process):
    """K texts per prompt, the same for the same seed; the sampled sequences' log-probs are those a
    teacher-forced forward gives (reference_logps of the samples as a preference example)."""
    from nemo_rpo.algorithms.rollout import rollout
    from nemo_rpo.data.prompts import prompts_from_texts
    from nemo_rpo.generation import MegatronGenerator, sampling_generator

    model = _model()
    prompts = ["sort: 4 1 3", "reverse: abc"]
    texts, out = model.generate(prompts, 3, seed=5)
    assert [len(row) for row in texts] == [3, 3] and out.tokens.shape[0] == 6
    assert model.generate(prompts, 3, seed=5)[0] == texts
    assert model.generate(prompts, 3, seed=6)[0] != texts
    # the rollout the online loop runs, on the same draws, samples the same tokens
    generator = MegatronGenerator(model.chunks, model.generation, eos_id=model.tokenizer.eos_id,
                                  pad_id=model.tokenizer.pad_id, vocab_size=model.tokenizer.vocab_size)  # fmt: skip
    constant = type("R", (), {"score": lambda self, p, r: [0.0] * len(r)})()
    batch, _, _ = rollout(generator, constant, model.tokenizer,
                          prompts_from_texts(prompts, model.tokenizer, max_prompt_len=64), 3,
                          sampling_generator(model.seed + 5, 0), 0)  # fmt: skip
    assert batch.texts == [t for row in texts for t in row]
    teacher_forced = model.reference_logps(batch.examples)
    torch.testing.assert_close(teacher_forced, out.seq_logps().view(2, 3), rtol=1e-4, atol=1e-4)


def test_export_hf_gives_the_same_logps_in_transformers(tmp_path, one_process):
    """The exported Llama directory, read by transformers, scores every response as the model does."""
    transformers = pytest.importorskip("transformers")
    model = _model()
    examples = _examples(model, 4)
    model.train_step(examples, ref_logps=model.reference_logps(examples))
    ours = model.reference_logps(examples)
    out = model.export_hf(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    theirs = torch.zeros_like(ours)
    with torch.no_grad():
        for ex in examples:
            for r, response in enumerate(ex.response_ids):
                ids = torch.tensor([ex.prompt_ids + response])
                logps = torch.log_softmax(hf(ids).logits[0, :-1].float(), dim=-1)
                targets = ids[0, 1:]
                picked = logps.gather(1, targets[:, None])[:, 0]
                theirs[ex.index, r] = picked[len(ex.prompt_ids) - 1 :].sum()
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
