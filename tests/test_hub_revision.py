"""Hub models pinned to one commit: refine's fingerprint and workers, train's base and model card.

The hub is a real Hugging Face cache directory (refs and snapshots, as `huggingface_hub` lays it
out) holding tiny local models, read offline by huggingface_hub and transformers themselves; the
online lookup asks a loopback HTTP server that answers the hub's model-info API.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from refinex_spark.config import Config, ModelConfig, load_config
from refinex_spark.jobs import distill, refine, train
from refinex_spark.lake import Lake
from refinex_spark.model.backends import HFBackend
from refinex_spark.model.revision import hub_commit, hub_pin
from refinex_spark.model.tiny import build_tiny_model
from refinex_spark.model.train import read_model_card
from refinex_spark.runtime import RunContext, StageStats, new_run_id

REPO = "acme/refine"
V1, V2 = "1" * 40, "2" * 40  # commits


def _publish(cache: Path, repo: str, commit: str, model_dir: Path, *refs: str) -> None:
    """`model_dir`'s files as snapshot `commit` of hub model `repo` in `cache`, with `refs` pointing at it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, folder / "snapshots" / commit)
    for ref in refs:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two tiny models with other weights: what V1 and V2 of the hub model hold."""
    root = tmp_path_factory.mktemp("weights")
    texts = ["[000] Share this article", "[001] The river rose overnight."] * 20
    return {commit: build_tiny_model(root / commit[:1], texts, vocab_size=300, seed=seed)
            for seed, commit in enumerate((V1, V2))}


@pytest.fixture
def hub(tmp_path, monkeypatch, models) -> Path:
    """An offline hub cache where main is V2 and tag v1 is V1."""
    cache = tmp_path / "hub"
    _publish(cache, REPO, V1, models[V1], "v1")
    _publish(cache, REPO, V2, models[V2], "main")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_revision_resolves_to_its_commit_from_the_cache_offline(hub):
    assert hub_commit(REPO) == V2  # main
    assert hub_commit(REPO, "v1") == V1
    assert hub_commit(REPO, V1) == V1  # a commit is taken as given
    with pytest.raises(ValueError, match=r"hub model 'acme/other': HF_HUB_OFFLINE is set and the local Hugging "
                                         r"Face cache does not hold it"):
        hub_commit("acme/other")
    with pytest.raises(ValueError, match=r"'acme/refine' at revision 'v9'"):
        hub_commit(REPO, "v9")


class _HubAPI(BaseHTTPRequestHandler):
    """The hub's model-info endpoint for REPO: main is V1 (newer than the cache's V2, say)."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path in (f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main"):
            status, body, headers = 200, {"id": REPO, "sha": V1}, {}
        elif self.path == f"/api/models/{REPO}/revision/v1":
            status, body, headers = 503, {"error": "Service unavailable"}, {}
        else:
            status, body, headers = 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


def test_online_the_hub_names_the_commit_and_an_unreachable_hub_falls_back_to_the_cache(hub, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_commit(REPO) == V1  # the hub's answer, not the cache's main
        with pytest.raises(ValueError, match=r"hub model 'acme/missing': .*404"):
            hub_commit("acme/missing")  # the hub answered: no falling back to a stale cache
        assert hub_commit(REPO, "v1") == V1  # the hub failing (503) is no answer: the cache's
    finally:
        server.shutdown()
        server.server_close()
    # Nothing listens there any more: the cache answers, as transformers would load from it.
    assert hub_commit(REPO) == V2
    with pytest.raises(ValueError, match=r"the hub is out of reach \(.*\) and the local Hugging Face cache"):
        hub_commit("acme/other")


def _first_weight(backend: HFBackend) -> torch.Tensor:
    return next(backend.model.parameters()).detach().clone()


def test_the_hf_backend_loads_the_pinned_commit(hub, models):
    pinned = {c: _first_weight(HFBackend(REPO, ModelConfig(path=REPO, revision=c, device="cpu"))) for c in (V1, V2)}
    local = {c: _first_weight(HFBackend(str(models[c]), ModelConfig(path=str(models[c]), device="cpu")))
             for c in (V1, V2)}
    assert torch.equal(pinned[V1], local[V1]) and torch.equal(pinned[V2], local[V2])
    assert not torch.equal(pinned[V1], pinned[V2])


def _config(*overrides: str) -> Config:
    return load_config(overrides=list(overrides))


def test_refine_pins_a_hub_model_to_the_commit_its_revision_names(hub):
    """The fingerprint names the commit, so a push to main makes the documents pending again,
    and a pinned revision keeps them as they are."""
    main = _config(f"model.path={REPO}")
    refine.check_model(main)
    assert refine.weights_revision(main.model) == V2
    tagged = _config(f"model.path={REPO}", "model.revision=v1")
    assert refine.weights_revision(tagged.model) == V1
    before = refine.fingerprint(main, V2)
    assert refine.fingerprint(tagged, V1) != before
    (hub / "models--acme--refine" / "refs" / "main").write_text(V1)  # a push to main
    assert refine.weights_revision(main.model) == V1
    (hub / "models--acme--refine" / "refs" / "v1").write_text(V2)  # the tag moved: a pinned commit would not
    assert refine.weights_revision(_config(f"model.path={REPO}", f"model.revision={V1}").model) == V1


def test_a_revision_is_refused_for_a_local_model_directory_and_a_served_model(models):
    config = _config(f"model.path={models[V1]}", "model.revision=main")
    with pytest.raises(ValueError, match=r"model.revision 'main' names a hub revision, but .* is a local directory"):
        refine.weights_revision(config.model)
    served = _config("model.backend=openai", "model.base_url=http://127.0.0.1:9/v1", "model.revision=main")
    with pytest.raises(ValueError, match=r"a served \(openai\) model's are the server's: unset model.revision"):
        refine.check_model(served)


def test_a_missing_local_base_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(ValueError, match=r"train.base '.*/no/base' is no directory and no hub id"):
        hub_pin(str(tmp_path / "no" / "base"), None, ("train.base", "train.base_revision"))


@pytest.mark.parametrize("value", ["", "main branch", "../../etc", "v1..v2", "-rf"])
def test_a_revision_must_be_a_branch_tag_or_commit(value):
    with pytest.raises(ValueError, match="must be a hub branch, tag or commit"):
        _config(f"model.revision={value}")
    with pytest.raises(ValueError, match="must be a hub branch, tag or commit"):
        _config(f"train.base_revision={value}")


def test_train_fine_tunes_the_pinned_commit_of_a_hub_base_and_records_it(spark, demo_lake, hub, tmp_path):
    """`train.base` a hub id: the commit its revision names is what the processes load, what the
    model card records and what a resume must match."""
    _publish(hub, "acme/base", V1, Path(demo_lake.model.path), "main")
    out = tmp_path / "model"
    shutil.copytree(demo_lake.lake.path, tmp_path / "lake")  # this test distils into it: the demo's stays as it is
    config = demo_lake.model_copy(update={
        "train": demo_lake.train.model_copy(update={"base": "acme/base", "output_dir": str(out), "epochs": 0.25}),
        "lake": demo_lake.lake.model_copy(update={"path": str(tmp_path / "lake")})})
    ctx = RunContext(config, spark, Lake(spark, config.lake), StageStats("train", new_run_id("train")))
    summary = train.run(ctx)
    assert summary["base_revision"] == V1
    assert summary["metrics"]["programs_over_max_new_tokens"] >= 0  # counted against model.max_new_tokens
    card = read_model_card(out)
    assert card["base_model"] == "acme/base"
    assert card["refinex"]["train_config"]["base_revision"] == V1
    again = train.run(RunContext(config, spark, Lake(spark, config.lake), StageStats("train", new_run_id("train"))))
    assert again["already_trained"] and "collect" not in again["seconds"]  # finished: not redone, nothing read
    # Samples of other distill settings land in the table: this fingerprint's did not change, nor does the run.
    other = config.model_copy(update={"distill": config.distill.model_copy(update={"max_ops_per_chunk": 3})})
    ctx = RunContext(other, spark, Lake(spark, other.lake), StageStats("distill", new_run_id("distill")))
    assert distill.run(ctx)["counts"]["docs"] > 0
    again = train.run(RunContext(config, spark, Lake(spark, config.lake), StageStats("train", new_run_id("train"))))
    assert again["already_trained"]
    # main moves on: the finished V1 run is replaced by a run on the new commit, not resumed
    _publish(hub, "acme/base", V2, Path(demo_lake.model.path), "main")
    newer = train.run(RunContext(config, spark, Lake(spark, config.lake), StageStats("train", new_run_id("train"))))
    assert newer["base_revision"] == V2 and newer["metrics"]["resumed_from_step"] == 0
    assert read_model_card(out)["refinex"]["train_config"]["base_revision"] == V2


def test_init_tiny_refuses_a_base_revision(spark, tmp_path):
    config = load_config(overrides=[f"lake.path={tmp_path / 'lake'}", f"train.output_dir={tmp_path / 'model'}",
                                    "train.base_revision=main"])
    ctx = RunContext(config, spark, Lake(spark, config.lake), StageStats("train", new_run_id("train")))
    with pytest.raises(ValueError, match="--init-tiny builds its own base, which has no hub revision"):
        train.run(ctx, init_tiny=True)
