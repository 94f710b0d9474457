"""Tiny randomly initialised Hugging Face models (and a byte-level BPE tokenizer) built offline for tests.

``save_tiny_hf(path, "llama")``: Llama with GQA (4 heads, 2 KV heads) and untied embeddings;
``save_tiny_hf(path, "qwen2")``: Qwen2 with q/k/v biases and tied embeddings. Both use a 512-token
vocabulary and a byte-level BPE tokenizer of fewer tokens (the model vocabulary may be larger).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 512


def tiny_hf_model(kind: str, seed: int = 0):
    """The model object (eval mode, fp32); weights drawn with a larger std so logits vary visibly."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=3)  # fmt: skip
    torch.manual_seed(seed)
    if kind == "llama":
        config = transformers.LlamaConfig(
            **common, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0
        )
        model = transformers.LlamaForCausalLM(config)
    elif kind == "qwen2":
        config = transformers.Qwen2Config(
            **common, tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1000000.0
        )
        model = transformers.Qwen2ForCausalLM(config)
    else:
        raise ValueError(kind)
    with (
        torch.no_grad()
    ):  # norms and biases start at 1 / 0 in HF: give them values a wrong mapping would show
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def tiny_tokenizer():
    """A byte-level BPE tokenizer (<s>=1 prepended, </s>=2, <pad>=3) with a chat template."""
    import tokenizers
    import transformers

    special = ["<unk>", "<s>", "</s>", "<pad>"]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(
        ["reverse the word hello", "sort 3 1 2", "upper abc", "the quick brown fox"] * 10, trainer
    )
    bpe.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>", unk_token="<unk>")  # fmt: skip
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}<|assistant|>\n"
    )
    return tok


def save_tiny_hf(path: str | Path, kind: str, seed: int = 0) -> Path:
    """Write the tiny model (safetensors) and tokenizer to ``path``; returns it."""
    path = Path(path)
    tiny_hf_model(kind, seed).save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path
