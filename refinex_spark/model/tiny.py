"""Locally built Qwen3-architecture models: a tiny one for tests and demos, a 0.6B-shaped config.

There is no model hub at test time, so the tiny model's tokenizer is trained here with
`tokenizers` on the texts it will see (instruction, numbered chunks, programs) and the model is
randomly initialised from a config. Both are saved with `save_pretrained`, so everything else
loads them exactly like a real checkpoint: `AutoTokenizer` / `AutoModelForCausalLM` on a path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

# Qwen's special tokens, so the tiny model exercises the same chat layout as the real one.
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# ChatML, as Qwen uses it: the turn terminator doubles as eos so generation stops after a turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Byte-level BPE on `texts` (any input stays encodable), wrapped with Qwen-style specials."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=PAD_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START],
        model_max_length=32_768,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_qwen3_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_positions: int = 4096,
    **extra: Any,
) -> Qwen3Config:
    """A small Qwen3; `extra` passes any other Qwen3Config field (e.g. initializer_range)."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_positions,
        max_window_layers=num_layers,
        tie_word_embeddings=True,
        **extra,
    )


def qwen3_0_6b_config() -> Qwen3Config:
    """The shape of Qwen3-0.6B(-Base), for GPU throughput benchmarks with random weights."""
    return Qwen3Config(
        vocab_size=151_936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40_960,
        max_window_layers=28,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        bos_token_id=151_643,
        eos_token_id=151_643,
    )


def build_tiny_model(
    out_dir: Path | str,
    texts: Iterable[str],
    vocab_size: int = 2048,
    seed: int = 0,
    **shape: Any,
) -> Path:
    """Train a tokenizer on `texts`, initialise a tiny Qwen3 (seeded), save both to `out_dir`.

    `shape` goes to `tiny_qwen3_config` (hidden_size, num_layers, initializer_range, ...).
    """
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    config = tiny_qwen3_config(len(tokenizer), **shape)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
