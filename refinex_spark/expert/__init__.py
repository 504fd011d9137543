"""The expert pass without Spark: the versioned expert instruction, sampling and splitting
(`sampling`), and the HTTP client (`client`, shared with the `openai` refine backend).
`refinex_spark.jobs.expert_generate` maps these over Spark partitions.

The instruction text lives in `conf/prompts/<version>.txt` (see conf/prompts/README.md for why
each sentence is there). Only the Spark driver reads it; executors get the text in the task.
"""

from __future__ import annotations

import re
from pathlib import Path

from refinex_spark.config import CONF_DIR

PROMPT_VERSION_RE = re.compile(r"expert-v[0-9]+")
# What a local expert without a chat template continues from: the cleaned text, not a refine program.
PLAIN_SUFFIX = "\n\nCleaned text:\n"


def load_instruction(version: str, conf_dir: Path | str = CONF_DIR) -> str:
    """The expert instruction of a prompt version, from `<conf_dir>/prompts/<version>.txt`."""
    if not PROMPT_VERSION_RE.fullmatch(version):
        raise ValueError(f"expert prompt versions are named expert-v<N>, got {version!r}")
    path = Path(conf_dir) / "prompts" / f"{version}.txt"
    if not path.is_file():
        raise ValueError(f"no expert prompt {version!r}: {path} does not exist")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"expert prompt file {path} is empty")
    return text
