"""A model's revision: what makes a retrained model a new model.

A local directory's is a digest of its files; a hub model's is the commit its revision names.
Refine keys its fingerprint on it (a retrained model refines its documents again), and every
worker's backend cache on it (a model replaced in place is loaded again). No torch import: the
driver takes it before any backend loads.
"""

from __future__ import annotations

import hashlib
import os
import re

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


# A hub id, org/name, as the hub spells them (a local directory is looked for first).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit that hub model `repo_id` has at `revision` (a branch, tag or commit; default main).

    Taken once on the driver and handed to every process that loads the model: all of them load
    the same weights, even while someone pushes to the repository, and the rows name those weights.
    A full commit hash is taken as given; otherwise the hub is asked, or, with HF_HUB_OFFLINE or
    the hub out of reach, the local cache (as transformers would load from it).
    """
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    at = f" at revision {revision!r}" if revision else ""
    unreachable = "HF_HUB_OFFLINE is set"
    if not constants.HF_HUB_OFFLINE:
        try:
            commit = HfApi().model_info(repo_id, revision=revision, timeout=30).sha
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status is None or (status < 500 and status not in (408, 429)):  # no such model or revision, no access
                raise ValueError(f"hub model {repo_id!r}{at}: {str(e).splitlines()[0]}") from e
            unreachable = f"the hub failed (HTTP {status})"  # down or busy for now: the cache may know it
        except Exception as e:  # noqa: BLE001 - no answer (network, DNS, proxy): the cache may know it
            unreachable = f"the hub is out of reach ({type(e).__name__}: {e})"
        else:
            if not commit:
                raise ValueError(f"hub model {repo_id!r}{at}: the hub named no commit for it")
            return commit
    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):  # <cache>/models--org--name/snapshots/<commit>/config.json
        return os.path.basename(os.path.dirname(cached))
    raise ValueError(f"hub model {repo_id!r}{at}: {unreachable} and the local Hugging Face cache does not hold "
                     "it; download it first, or point the setting at a local model directory")


def hub_pin(path: str, revision: str | None, keys: tuple[str, str]) -> str | None:
    """The commit to load model `path` at when it is a hub id; None for a local directory, whose
    files are its revision. `keys`: the config keys of the path and the revision, for the errors."""
    path_key, revision_key = keys
    if os.path.isdir(path):
        if revision is not None:
            raise ValueError(f"{revision_key} {revision!r} names a hub revision, but {path_key} {path} is a local "
                             f"directory (its files are its revision): unset {revision_key}")
        return None
    if not HUB_ID.fullmatch(path):
        raise ValueError(f"{path_key} {path!r} is no directory and no hub id (org/name)")
    return hub_commit(path, revision)
