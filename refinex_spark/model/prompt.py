"""The versioned prompt format shared by training and inference.

A prompt is an instruction (the template text of one prompt version) followed by a numbered
chunk; the model answers with the chunk's program. Training and every backend build prompts
with the same functions here, so a model only ever sees the layout it was trained on. The
template text travels as a string: the Spark driver reads it from `conf/prompts/` and ships it
to executors, which never read `conf/` themselves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from refinex_spark.config import CONF_DIR, REFINE_PROMPT_VERSIONS

# Every released prompt version; a trained model records the one it was trained with.
PROMPT_VERSIONS = REFINE_PROMPT_VERSIONS
PROMPT_VERSION = PROMPT_VERSIONS[-1]

# Layout for tokenizers without a chat template (raw base models, plain completion endpoints).
PLAIN_SUFFIX = "\n\nProgram:\n"


def load_template(version: str = PROMPT_VERSION, conf_dir: Path | str = CONF_DIR) -> str:
    """The instruction text of a prompt version, from `<conf_dir>/prompts/<version>.txt`."""
    if version not in PROMPT_VERSIONS:
        raise ValueError(f"unknown prompt version {version!r} (known: {', '.join(PROMPT_VERSIONS)})")
    path = Path(conf_dir) / "prompts" / f"{version}.txt"
    return path.read_text(encoding="utf-8").strip()


def template_digest(template: str) -> str:
    """Short hash of a template text, so a model card pins the exact instruction it saw."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def user_message(template: str, chunk_text: str) -> str:
    """The user turn of a chat prompt: the instruction, a blank line, the numbered chunk."""
    return f"{template}\n\n{chunk_text}"


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer: Any, template: str, chunk_text: str, plain_suffix: str = PLAIN_SUFFIX) -> str:
    """The full prompt string the model continues with a program (or, with the expert's
    `plain_suffix`, with the cleaned text).

    With a chat template the instruction and chunk form one user turn (a system turn is not
    portable: some chat templates reject it) followed by the assistant generation prefix;
    otherwise the plain `instruction, chunk, plain_suffix` layout. `tokenizer` may be None.
    """
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": user_message(template, chunk_text)}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return user_message(template, chunk_text) + plain_suffix
