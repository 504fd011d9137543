"""Per-Python-worker backend cache.

A Spark Python worker runs many tasks in one process; the model must load once per worker,
not once per task or batch. The cache lives here, in an importable module of the package,
because state kept in the driver script is pickled into every task and so never survives.
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

from refinex_spark.config import ModelConfig
from refinex_spark.model.backends import Backend, make_backend

_lock = threading.Lock()
# What was loaded -> the backend holding it. Only the load identity is in the key: other
# settings (batch size, max_new_tokens) reuse the loaded weights through `with_config`.
_backends: dict[tuple[str, ...], Any] = {}


def _load_key(config: ModelConfig) -> tuple[str, ...]:
    key = (config.backend, config.path, config.revision or "", config.device, config.dtype)
    if config.backend == "openai":
        key += (config.base_url or "", config.served_model or "")
    return key


def get_backend(config: ModelConfig | str | dict[str, Any], revision: str | None = None) -> Backend:
    """The worker's backend for `config` (a ModelConfig, its JSON, or its dict), loaded once per
    `revision` of the model directory (`model.revision.model_revision`, taken on the driver): a model
    retrained in place is loaded again, in a worker that a long-lived session keeps."""
    if isinstance(config, str):
        config = ModelConfig.model_validate_json(config)
    elif isinstance(config, dict):
        config = ModelConfig.model_validate(config)
    key = (*_load_key(config), revision or "")
    with _lock:
        backend = _backends.get(key)
        if backend is None:
            # One model per worker: another revision, path, dtype or device (a long-lived session's next
            # run, the hf expert then refine) frees its memory before this one loads.
            if _backends:
                _backends.clear()
                _release_gpu_memory()
            backend = _backends[key] = make_backend(config)
    return backend if backend.config == config else backend.with_config(config)


def _release_gpu_memory() -> None:
    """Hand the dropped model's cached CUDA blocks back, so the next model has the GPU's memory."""
    torch = sys.modules.get("torch")  # loaded only if a backend was: never imported here for nothing
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def cached_keys() -> list[tuple[str, ...]]:
    with _lock:
        return list(_backends)


def clear_cache() -> None:
    """Drop every cached backend (tests; freeing a GPU before loading another model)."""
    with _lock:
        _backends.clear()
