"""The refine model, without Spark: prompt format, tiny local models, training, inference.

Submodules: `prompt` (versioned prompt layout), `tiny` (locally built Qwen3 models), `train`
(Trainer fine-tuning and program metrics), `backends` (hf / vllm / openai generation), `cache`
(the per-Python-worker backend cache) and `revision` (a model directory's identity). Only the
prompt helpers are re-exported here so that importing the package does not import torch.
"""

from refinex_spark.model.prompt import PROMPT_VERSION, PROMPT_VERSIONS, build_prompt, load_template

__all__ = ["PROMPT_VERSION", "PROMPT_VERSIONS", "build_prompt", "load_template"]
