"""A local model directory's revision: what makes a retrained model a new model.

Refine keys its fingerprint on it (a retrained model refines its documents again), and every
worker's backend cache on it (a model replaced in place is loaded again). No torch import: the
driver takes it before any backend loads.
"""

from __future__ import annotations

import hashlib
import os

# What a local model directory's revision covers: weights, configs and tokenizer files (the chat
# template is its own file since transformers 5), not the card or the Trainer's pickled arguments.
_REVISION_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja")
_REVISION_NAMES = frozenset({"tokenizer.model", "merges.txt", "vocab.txt"})
_NOT_REVISION = frozenset({"training_args.bin"})


def model_revision(path: str) -> str | None:
    """Identity of a local model directory: sha256 over the contents of its weight, config and
    tokenizer files in name order. A retrained model with other weights is a new revision (its
    documents are refined again); the same bytes rewritten (a rerun of `train`) are not."""
    if not os.path.isdir(path):
        return None
    files = sorted(f for f in os.listdir(path)
                   if (f.endswith(_REVISION_SUFFIXES) or f in _REVISION_NAMES) and f not in _NOT_REVISION
                   and os.path.isfile(os.path.join(path, f)))
    digest = hashlib.sha256()
    for name in files:
        with open(os.path.join(path, name), "rb") as f:  # file_digest streams: weights can be GBs
            digest.update(f"{name}\0".encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]
