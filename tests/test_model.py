"""The refine model layer: prompt format, tiny models, training, backends, worker cache.

One module-scoped fixture trains a tiny Qwen3 on synthetic distilled samples (a few seconds on
CPU); the backend tests run that trained model, whose programs differ from prompt to prompt.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM, TrainerCallback

from refinex_spark.config import ChunkingConfig, ModelConfig, TrainConfig
from refinex_spark.distill import distill
from refinex_spark.model.revision import model_revision
from refinex_spark.model import sample_file
from refinex_spark.model.sample_file import SampleFile, write_sample_file
from refinex_spark.model import cache
from refinex_spark.model.backends import HFBackend, OpenAIBackend, is_oom, make_backend
from refinex_spark.refine import PromptRefused
from refinex_spark.model.prompt import PLAIN_SUFFIX, PROMPT_VERSIONS, build_prompt, load_template
from refinex_spark.model.tiny import IM_END, build_tiny_model, qwen3_0_6b_config
from refinex_spark.model.train import (
    CHECKPOINTS,
    DONE,
    RUN_IDENTITY,
    _mean_logged_loss,
    prior_run,
    IGNORE_INDEX,
    _encode_all,
    encode_sample,
    evaluate_model,
    program_metrics,
    read_model_card,
    held_out,
    train_model,
)
from refinex_spark.program import parse_program
from refinex_spark.synth import generate_corpus

# A trained tiny model must write syntactically valid programs at least this often; the same
# model before training must not (it emits token soup).
VALID_FLOOR = 0.6
# Training runs on a short instruction: refine-v1's ~340 tokens would triple every sequence and
# the prompt code path is the same for any template text.
TRAIN_TEMPLATE = "Delete the noise in these numbered lines. Answer with calls, one per line."
STOP_AT = 60  # simulated preemption: the first run stops here, right after a checkpoint
TRAIN = TrainConfig(
    epochs=4,
    learning_rate=3e-3,
    batch_size=8,
    gradient_accumulation=1,
    max_seq_len=1024,
    eval_fraction=0.1,
    max_eval_samples=16,
    save_steps=20,
    seed=0,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread) -> None:
    """Every test of this module trains or generates with one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def template() -> str:
    return load_template()


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, str]]:
    """(chunk_text, program) pairs from synthetic raw/expert documents through distillation."""
    chunking = ChunkingConfig(token_budget=128)
    pairs = []
    for doc in generate_corpus(120, seed=0, target_chars=(400, 1500)):
        pairs += [(s.prompt, s.program) for s in distill(doc.raw, doc.expert, chunking=chunking).samples if s.kept]
    assert len(pairs) >= 150
    return pairs


@pytest.fixture(scope="module")
def corpus(samples: list[tuple[str, str]], template: str) -> list[str]:
    """What the tiny tokenizers are trained on: the instructions, chunks and programs."""
    return [template, TRAIN_TEMPLATE, *(f"{chunk}\n{program}" for chunk, program in samples)]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base"), corpus, vocab_size=2048, seed=0)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


@dataclass(frozen=True)
class Trained:
    out: Path
    interrupted: dict
    resumed: dict
    untrained_rate: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base_model: Path, samples) -> Trained:
    held = [samples[i] for i in held_out(len(samples), TRAIN.eval_fraction, TRAIN.seed, TRAIN.max_eval_samples)]
    untrained_rate = evaluate_model(base_model, held, TRAIN_TEMPLATE)["valid_program_rate"]
    out = tmp_path_factory.mktemp("refine")
    kwargs = dict(base=str(base_model), data_version=7, fingerprint="fp-test")
    first = train_model(samples, TRAIN, TRAIN_TEMPLATE, out, callbacks=[_StopAt(STOP_AT)], **kwargs)
    second = train_model(samples, TRAIN, TRAIN_TEMPLATE, out, **kwargs)
    return Trained(out, first.metrics, second.metrics, untrained_rate)


# --- prompt ---------------------------------------------------------------------------------


def test_template_describes_the_program_language(template: str) -> None:
    for call in ("remove_lines(start=", "remove_str(line=", "keep_all()"):
        assert call in template
    assert load_template(PROMPT_VERSIONS[-1]) == template
    with pytest.raises(ValueError, match="unknown prompt version"):
        load_template("refine-v0")


def test_prompt_with_chat_template(base_model: Path, template: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    chunk = "[000] Home | News\n[001] The river rose."
    prompt = build_prompt(tokenizer, template, chunk)
    assert prompt == f"<|im_start|>user\n{template}\n\n{chunk}{IM_END}\n<|im_start|>assistant\n"


def test_prompt_without_chat_template(base_model: Path, template: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.chat_template = None
    chunk = "[000] a\n[001] b"
    expected = f"{template}\n\n{chunk}{PLAIN_SUFFIX}"
    assert build_prompt(tokenizer, template, chunk) == expected == build_prompt(None, template, chunk)
    assert expected.endswith("\n\nProgram:\n")
    # A local expert continues with the cleaned text, not with a refine program.
    from refinex_spark.expert import PLAIN_SUFFIX as EXPERT_SUFFIX

    assert build_prompt(tokenizer, "Clean it.", chunk, EXPERT_SUFFIX) == f"Clean it.\n\n{chunk}\n\nCleaned text:\n"


# --- tiny models ----------------------------------------------------------------------------


def test_tiny_model_saves_reloads_and_is_seeded(tmp_path: Path, base_model: Path, samples) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    assert isinstance(model, Qwen3ForCausalLM) and model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token_id is not None and tokenizer.bos_token
    text = "naïve café — 東京 \t[12] x\r\n"  # byte-level BPE: any text round-trips
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    texts = [f"{c}\n{p}" for c, p in samples[:40]]
    first = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "a", texts, vocab_size=512, seed=3))
    again = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "b", texts, vocab_size=512, seed=3))
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "c", texts, vocab_size=512, seed=4))
    weights = lambda m: torch.cat([p.flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(weights(first), weights(again))
    assert not torch.equal(weights(first), weights(other))


def test_qwen3_0_6b_shape() -> None:
    config = qwen3_0_6b_config()
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.55e9 < n_params < 0.65e9  # Qwen3-0.6B: ~596M with tied embeddings
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (28, 1024, 8)


# --- training -------------------------------------------------------------------------------


def test_training_teaches_valid_programs(trained: Trained) -> None:
    metrics = trained.resumed
    assert trained.untrained_rate < VALID_FLOOR <= metrics["valid_program_rate"]
    assert 0.0 <= metrics["exact_match"] <= metrics["valid_program_rate"]
    assert metrics["last_loss"] < 0.5 * metrics["first_loss"]
    assert metrics["eval_loss"] < metrics["first_loss"]


def test_held_out_programs_are_generated_within_refines_limit(trained: Trained, samples) -> None:
    """Generating as refine will (model.max_new_tokens) reports what refine gets: a limit shorter
    than the programs cuts them, and cut programs are not valid."""
    held = [samples[i] for i in held_out(len(samples), TRAIN.eval_fraction, TRAIN.seed, TRAIN.max_eval_samples)]
    roomy = evaluate_model(trained.out, held, TRAIN_TEMPLATE)["valid_program_rate"]
    assert evaluate_model(trained.out, held, TRAIN_TEMPLATE, max_new_tokens=2)["valid_program_rate"] < roomy


def test_training_resumes_from_last_checkpoint(trained: Trained) -> None:
    assert trained.interrupted["global_step"] == STOP_AT and not trained.interrupted["completed"]
    assert trained.resumed["resumed_from_step"] == STOP_AT
    assert trained.resumed["completed"] and trained.resumed["global_step"] == trained.resumed["max_steps"] > STOP_AT
    # The loss curve is continuous across the restart: the first logged loss is the first run's, and
    # the mean covers the steps before the restart too (the Trainer's own figure would not).
    assert trained.resumed["first_loss"] == trained.interrupted["first_loss"]
    assert trained.resumed["last_loss"] < trained.resumed["train_loss"] < trained.resumed["first_loss"]
    # Finished: marked done, and the checkpoints (optimizer state and all) are gone from the model directory.
    assert not list((trained.out / CHECKPOINTS).glob("checkpoint-*"))
    assert json.loads((trained.out / CHECKPOINTS / DONE).read_text()) == json.loads(
        (trained.out / CHECKPOINTS / RUN_IDENTITY).read_text())


@pytest.fixture
def unfinished(trained: Trained, tmp_path: Path) -> Path:
    """An output directory holding the checkpoints of the `trained` run, as if it had been cut short."""
    (tmp_path / CHECKPOINTS).mkdir()
    shutil.copy(trained.out / CHECKPOINTS / RUN_IDENTITY, tmp_path / CHECKPOINTS / RUN_IDENTITY)
    return tmp_path


def test_resume_refuses_another_runs_checkpoints(unfinished: Path, base_model: Path, samples) -> None:
    """An unfinished run of other settings is refused, before any sample is read; --fresh discards it."""
    class Unread(list):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("samples read before the refusal")

    with pytest.raises(ValueError, match="belong to another run that did not finish .*train --fresh"):
        train_model(Unread(samples), TRAIN, TRAIN_TEMPLATE, unfinished, base=str(base_model), data_version=8,
                    fingerprint="fp-test")
    identity = json.loads((unfinished / CHECKPOINTS / RUN_IDENTITY).read_text())
    assert prior_run(unfinished, identity) == "resume"
    # A run whose newest checkpoint is its last step finished (an earlier release wrote no done.json):
    # another run replaces it.
    last = unfinished / CHECKPOINTS / "checkpoint-10"
    last.mkdir()
    (last / "trainer_state.json").write_text(json.dumps({"global_step": 10, "max_steps": 10}))
    assert prior_run(unfinished, {**identity, "data_version": 8}) == "fresh"
    for state in ('{"global_step": 9, "max_steps": 10}', '{"global_st'):  # short of its end; a save cut short
        (last / "trainer_state.json").write_text(state)
        with pytest.raises(ValueError, match="did not finish"):
            prior_run(unfinished, {**identity, "data_version": 8})


def test_mean_logged_loss_weighs_each_log_by_the_steps_it_covers() -> None:
    """Logs every 5 steps, a checkpoint at 7, resumed there: the first log after it covers steps 8-10,
    and steps 6-7 went unlogged (the Trainer's own mean would divide the resumed steps' sum by 15)."""
    history = [{"step": 5, "loss": 3.0}, {"step": 10, "loss": 2.0}, {"step": 15, "loss": 1.0}, {"step": 15}]
    assert _mean_logged_loss(history, resumed_from=7) == pytest.approx((3.0 * 5 + 2.0 * 3 + 1.0 * 5) / 13)
    assert _mean_logged_loss(history) == pytest.approx(2.0)
    assert _mean_logged_loss([{"step": 3}]) is None


def test_model_card_records_the_run(trained: Trained, base_model: Path) -> None:
    card = read_model_card(trained.out)
    refinex = card["refinex"]
    assert card["base_model"] == str(base_model)
    assert refinex["data_version"] == 7 and refinex["config_fingerprint"] == "fp-test"
    assert refinex["prompt_version"] == PROMPT_VERSIONS[-1]
    assert TrainConfig.model_validate(refinex["train_config"]).learning_rate == TRAIN.learning_rate
    assert refinex["metrics"]["valid_program_rate"] == trained.resumed["valid_program_rate"]
    assert (trained.out / "README.md").read_text().startswith("---\n")
    AutoModelForCausalLM.from_pretrained(trained.out)  # the final model is a loadable directory


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), fraction=st.floats(0, 0.99), seed=st.integers(0, 3), max_eval=st.integers(0, 50))
def test_held_out_is_a_seeded_sample(n: int, fraction: float, seed: int, max_eval: int) -> None:
    held = held_out(n, fraction, seed, max_eval)
    assert len(set(held)) == len(held) and set(held) <= set(range(n))
    assert len(held) == (min(max_eval, math.ceil(n * fraction)) if n > 1 else 0)
    assert held_out(n, fraction, seed, max_eval) == held


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), max_size=60), fraction=st.floats(0, 0.99), seed=st.integers(0, 3),
       max_eval=st.integers(0, 50))
def test_grouped_held_out_is_whole_documents(sizes: list[int], fraction: float, seed: int, max_eval: int) -> None:
    groups = [d for d, n in enumerate(sizes) for _ in range(n)]
    held = held_out(len(groups), fraction, seed, max_eval, [f"doc{d}" for d in groups])
    assert len(set(held)) == len(held) and set(held) <= set(range(len(groups)))
    n_eval = min(max_eval, math.ceil(len(groups) * fraction)) if len(groups) > 1 else 0
    assert len(held) <= n_eval
    held_docs = {groups[i] for i in held}
    assert all(sum(d == g for g in groups) == sum(groups[i] == d for i in held) for d in held_docs)
    # As full as whole documents allow: no document left in training would still fit.
    assert all(len(held) + sizes[d] > n_eval for d in set(groups) - held_docs)
    assert held_out(len(groups), fraction, seed, max_eval, [f"doc{d}" for d in groups]) == held


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=40), st.text(max_size=20)), max_size=12),
       batch_rows=st.integers(1, 5))
def test_sample_file_reads_back_what_was_written(tmp_path_factory, rows, batch_rows) -> None:
    """Any text, in order, across row-group boundaries; an empty file is an empty sample set."""
    path = tmp_path_factory.mktemp("samples") / "s.parquet"
    with patch.object(sample_file, "BATCH_ROWS", batch_rows):
        samples = write_sample_file(path, iter(rows))
        assert len(samples) == len(rows)
        assert list(samples) == [(prompt, program) for _, prompt, program in rows]
    assert samples.doc_ids() == [doc for doc, _, _ in rows]
    assert pickle.loads(pickle.dumps(samples)) == samples  # what TorchDistributor sends: a path


def test_sample_file_is_replaced_whole(tmp_path: Path) -> None:
    """A write that dies midway leaves the previous file as it was."""
    path = tmp_path / "s.parquet"
    write_sample_file(path, [("d1", "chunk", "keep_all()")])

    def dying():  # type: ignore[no-untyped-def]
        yield ("d2", "other", "keep_all()")
        raise RuntimeError("driver lost its executor")

    with pytest.raises(RuntimeError):
        write_sample_file(path, dying())
    assert list(SampleFile(str(path))) == [("chunk", "keep_all()")]


def test_resume_refuses_other_hyperparameters(unfinished: Path, trained: Trained, base_model: Path, samples) -> None:
    changed = TRAIN.model_copy(update={"learning_rate": TRAIN.learning_rate * 2})
    with pytest.raises(ValueError, match="belong to another run"):
        train_model(samples, changed, TRAIN_TEMPLATE, unfinished, base=str(base_model), data_version=7,
                    fingerprint="fp-test")
    # Another world size would resume at another place of the data: refused (checked before DDP starts).
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ValueError, match="belong to another run .*'world_size': 2"):
        mp.setenv("WORLD_SIZE", "2")
        train_model(samples, TRAIN, TRAIN_TEMPLATE, unfinished, base=str(base_model), data_version=7,
                    fingerprint="fp-test")
    # The processes setting is no hyperparameter: the finished run is that run, and is not redone.
    elsewhere = TRAIN.model_copy(update={"processes": 2})
    again = train_model(samples, elsewhere, TRAIN_TEMPLATE, trained.out, base=str(base_model), data_version=7,
                        fingerprint="fp-test")
    assert again.metrics == {**read_model_card(trained.out)["refinex"]["metrics"], "already_trained": True}


def test_retraining_on_the_same_data_keeps_the_refine_revision(tmp_path: Path, samples) -> None:
    """`train` rerun as the demo reruns it (tiny base rebuilt, then trained on the same samples)
    rewrites the same bytes, so refine's model revision, and so its fingerprint, stays put and no
    document is pending again. Retraining from scratch gives the same weights too (CPU)."""
    few = samples[:48]
    texts = [TRAIN_TEMPLATE, *(f"{chunk}\n{program}" for chunk, program in few)]
    config = TRAIN.model_copy(update={"epochs": 1, "max_eval_samples": 4})
    out = tmp_path / "model"

    def train(**kwargs):  # type: ignore[no-untyped-def]
        base = build_tiny_model(tmp_path / "base", texts, vocab_size=512, seed=0)
        return train_model(few, config, TRAIN_TEMPLATE, out, base=str(base), data_version=3, fingerprint="fp",
                           **kwargs)

    first = train()
    revision = model_revision(str(out))
    again = train()
    assert again.metrics["already_trained"] and again.metrics["global_step"] == first.metrics["global_step"]
    assert model_revision(str(out)) == revision
    fresh = train(resume=False)
    assert "already_trained" not in fresh.metrics and fresh.metrics["resumed_from_step"] == 0
    assert model_revision(str(out)) == revision
    # New data (another distill_samples version): the finished run is replaced, not refused.
    newer = train_model(few, config, TRAIN_TEMPLATE, out, base=str(tmp_path / "base"), data_version=4, fingerprint="fp")
    assert newer.metrics["completed"] and newer.metrics["resumed_from_step"] == 0
    assert read_model_card(out)["refinex"]["data_version"] == 4
    build_tiny_model(out, texts, vocab_size=512, seed=1)  # other weights in place: a new revision
    assert model_revision(str(out)) != revision


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(base_model)


@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.tuples(st.text(max_size=300), st.text(max_size=120)), max_size=8),
       max_len=st.integers(64, 200))
def test_packed_training_rows_are_the_encoded_samples(tokenizer, pairs, max_len) -> None:
    """The training set keeps its rows in one int32 array: each reads back as encode_sample made it,
    and the samples it leaves out are counted."""
    encoded = [encode_sample(tokenizer, "Clean.", c, p, max_len) for c, p in pairs]
    packed, dropped = _encode_all(tokenizer, "Clean.", pairs, max_len)
    assert [packed[i] for i in range(len(packed))] == [e for e in encoded if e is not None]
    assert dropped == sum(e is None for e in encoded)


@settings(max_examples=150, deadline=None)
@given(chunk=st.text(max_size=600), program=st.text(max_size=300), max_len=st.integers(64, 400))
def test_encoding_trains_on_the_whole_program_only(tokenizer, chunk: str, program: str, max_len: int) -> None:
    row = encode_sample(tokenizer, "Clean.", chunk, program, max_len)
    target = tokenizer(program, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = tokenizer(build_prompt(tokenizer, "Clean.", chunk), add_special_tokens=False)["input_ids"]
    k = len(target)
    if k > max_len - max_len // 2 or len(prompt) + k > max_len:
        # A program that crowds out its chunk, or a chunk that does not fit whole: cut, it would
        # teach deleting lines the model cannot see.
        assert row is None
        return
    assert row is not None
    assert len(row["input_ids"]) == len(row["labels"]) <= max_len
    assert row["labels"][-k:] == row["input_ids"][-k:] == target
    assert set(row["labels"][:-k]) <= {IGNORE_INDEX}
    assert row["input_ids"][:-k] == prompt  # the whole prompt, as inference feeds it


def test_program_metrics() -> None:
    targets = ["remove_lines(start=1, end=2)", "keep_all()", "remove_str(line=0, text='x y')", "keep_all()"]
    generated = ["remove_lines(start=1,end=2)\n", "keep_all()\nrm()", 'remove_str(line=0, text="x y")', ""]
    # canonical render ignores spacing and quote style; a rejected line or no op is invalid
    assert program_metrics(generated, targets) == {"valid_program_rate": 0.5, "exact_match": 0.5}


# --- backends -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chaotic_model(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    """A random tiny model with large weights: its greedy output differs from prompt to prompt
    (a trained tiny model mostly answers every chunk alike), so order checks can fail."""
    return build_tiny_model(tmp_path_factory.mktemp("chaotic"), corpus, vocab_size=2048, seed=1, initializer_range=0.2)


@pytest.fixture(scope="module")
def prompts(chaotic_model: Path, samples, template: str) -> list[str]:
    tokenizer = AutoTokenizer.from_pretrained(chaotic_model)
    return [build_prompt(tokenizer, template, chunk) for chunk, _ in samples[:8]]


def test_hf_backend_preserves_order_and_is_deterministic(chaotic_model: Path, prompts: list[str]) -> None:
    backend = HFBackend(str(chaotic_model), ModelConfig(max_new_tokens=12, batch_size=4, device="cpu"))
    batched = backend.generate(prompts)
    assert backend.generate(prompts) == batched
    assert [backend.generate([p])[0] for p in prompts] == batched
    assert len(set(batched)) > 1  # outputs depend on the prompt, so the order check means something
    shuffled = list(range(len(prompts)))
    random.Random(1).shuffle(shuffled)
    assert backend.generate([prompts[i] for i in shuffled]) == [batched[i] for i in shuffled]
    assert all(IM_END not in out for out in batched)  # stopped at eos, special tokens dropped
    assert backend.stats.prompts == 4 * len(prompts) and backend.stats.output_tokens > 0
    assert backend.stats.oom_retries == 0


def test_hf_backend_halves_batch_on_oom(chaotic_model: Path, prompts: list[str]) -> None:
    config = ModelConfig(max_new_tokens=12, batch_size=4, device="cpu")
    reference = HFBackend(str(chaotic_model), config).generate(prompts)
    seen: list[int] = []

    def allocator_limit(batch: int) -> None:
        seen.append(batch)
        if batch > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    backend = HFBackend(str(chaotic_model), config, batch_hook=allocator_limit)
    assert backend.generate(prompts) == reference
    assert backend.stats.oom_retries == 2 and seen[:3] == [4, 2, 1] and set(seen[3:]) == {1}

    backend.batch_hook = lambda batch: (_ for _ in ()).throw(RuntimeError("CUDA error: out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):  # still failing at batch size 1
        backend.generate(prompts[:2])
    backend.batch_hook = lambda batch: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not memory: no retry
        backend.generate(prompts[:2])
    assert is_oom(RuntimeError("... out of memory ...")) and not is_oom(ValueError("out of memory"))


def test_worker_cache_loads_once(chaotic_model: Path) -> None:
    cache.clear_cache()
    config = ModelConfig(path=str(chaotic_model), device="cpu", batch_size=2)
    first = cache.get_backend(config.model_dump_json())
    assert cache.get_backend(config) is first and cache.get_backend(config.model_dump()) is first
    other_batch = cache.get_backend(config.model_copy(update={"batch_size": 8}))
    assert other_batch is not first and other_batch.model is first.model and other_batch.config.batch_size == 8
    assert len(cache.cached_keys()) == 1
    # The model retrained in place (another revision): loaded again, the stale one dropped.
    retrained = cache.get_backend(config, revision="r2")
    assert retrained is not first and retrained.model is not first.model and len(cache.cached_keys()) == 1
    assert cache.get_backend(config, revision="r2") is retrained
    # Another load identity (dtype here; a path, a backend) replaces it too: one model per worker.
    other_dtype = cache.get_backend(config.model_copy(update={"dtype": "float32"}), revision="r2")
    assert other_dtype.model is not retrained.model and len(cache.cached_keys()) == 1
    cache.clear_cache()
    assert cache.get_backend(config) is not first


# --- openai-compatible HTTP backend ---------------------------------------------------------


class _Server:
    """A loopback OpenAI-compatible server with canned replies, injectable 503s and answers cut
    at max_tokens (finish_reason "length")."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        self.fail_next = 0
        self.status = 200
        self.finish_reason = "stop"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.fail_next > 0:
                    outer.fail_next -= 1
                    return self._send(503, {"error": "busy"})
                if outer.status != 200:
                    return self._send(outer.status, {"error": "bad request"})
                prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
                program = f"remove_lines(start={len(prompt)}, end={len(prompt)})"
                choice = {"message": {"role": "assistant", "content": program}} if "messages" in body else {"text": program}
                choice["finish_reason"] = outer.finish_reason
                self._send(200, {"choices": [choice], "usage": {"prompt_tokens": len(prompt), "completion_tokens": 9}})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture()
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_openai_backend_chat(server: _Server, monkeypatch: pytest.MonkeyPatch, template: str) -> None:
    monkeypatch.setenv("REFINE_TEST_KEY", "sk-local")
    config = ModelConfig(backend="openai", base_url=server.url, served_model="refine", api_key_env="REFINE_TEST_KEY",
                         max_new_tokens=64, batch_size=3)
    backend = make_backend(config)
    assert isinstance(backend, OpenAIBackend)
    prompts = [backend.format_prompt(template, f"[000] line {'x' * i}") for i in range(7)]
    assert prompts[0] == f"{template}\n\n[000] line "  # the server applies the chat template
    outputs = backend.generate(prompts)
    assert outputs == [f"remove_lines(start={len(p)}, end={len(p)})" for p in prompts]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-local"
    assert body["temperature"] == 0 and body["max_tokens"] == 64 and body["model"] == "refine"
    assert backend.stats.prompts == 7 and backend.stats.output_tokens == 63
    assert backend.stats.input_tokens == sum(len(p) for p in prompts)  # usage.prompt_tokens
    assert all(not parse_program(o).rejected for o in outputs)


def test_openai_backend_retries_then_fails(server: _Server) -> None:
    config = ModelConfig(backend="openai", base_url=server.url, batch_size=1, max_retries=2, backoff_base_s=0.0)
    backend = OpenAIBackend(config, endpoint="completions")
    server.fail_next = 2
    prompt = build_prompt(None, "Clean this.", "[000] a")
    assert backend.format_prompt("Clean this.", "[000] a") == prompt
    assert backend.generate([prompt]) == [f"remove_lines(start={len(prompt)}, end={len(prompt)})"]
    assert len(server.requests) == 3 and server.requests[0][0] == "/v1/completions"
    assert server.requests[0][2]["prompt"] == prompt and "messages" not in server.requests[0][2]
    server.fail_next = 3
    with pytest.raises(RuntimeError, match=r"/v1/completions: http_503: .*busy.* \(after 3 requests\)") as busy:
        backend.generate([prompt])
    assert not isinstance(busy.value, PromptRefused)  # the server's state: refine fails the task
    server.requests.clear()
    server.status = 400
    with pytest.raises(PromptRefused, match=r"http_400: .*\(after 1 requests\)"):  # a client error is not retried
        backend.generate([prompt])
    assert len(server.requests) == 1


def test_openai_backend_keeps_an_answer_cut_at_max_tokens(server: _Server) -> None:
    """A program cut at max_new_tokens still has valid ops, so the refine backend takes it (the
    expert, sharing the client, fails such an answer)."""
    server.finish_reason = "length"
    backend = OpenAIBackend(ModelConfig(backend="openai", base_url=server.url, max_retries=0))
    assert backend.generate(["x"]) == ["remove_lines(start=1, end=1)"]
    assert backend.stats.input_tokens == 1 and backend.stats.output_tokens == 9


def test_openai_backend_unreachable() -> None:
    config = ModelConfig(backend="openai", base_url="http://127.0.0.1:9/v1", request_timeout_s=2, max_retries=1,
                         backoff_base_s=0.0)
    with pytest.raises(RuntimeError, match=r"connection: .*\(after 2 requests\)"):
        OpenAIBackend(config).generate(["x"])
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend(ModelConfig(backend="openai"))


def test_vllm_backend_hands_vllm_the_token_ids_training_used(chaotic_model: Path, samples, template: str,
                                                             monkeypatch) -> None:
    """vLLM encodes a text prompt with the tokenizer's special tokens (a BOS for Llama-like tokenizers,
    a second one after a chat template's); training and the hf backend do not. So the backend hands
    vLLM token ids. vLLM needs a GPU: a stand-in records what its `LLM.generate` is given."""
    from tokenizers.processors import TemplateProcessing

    from refinex_spark.model.backends import VLLMBackend

    tokenizer = AutoTokenizer.from_pretrained(chaotic_model)
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(  # a tokenizer that adds a BOS, as Llama's does
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    chunks = [chunk for chunk, _ in samples[:4]]
    prompts = [build_prompt(tokenizer, template, chunk) for chunk in chunks]
    assert tokenizer(prompts[0])["input_ids"][0] == tokenizer.bos_token_id

    class StandIn:
        seen: list = []

        def get_tokenizer(self):  # type: ignore[no-untyped-def]
            return tokenizer

        def generate(self, inputs, sampling, use_tqdm=False):  # type: ignore[no-untyped-def]
            self.seen += inputs
            done = SimpleNamespace(outputs=[SimpleNamespace(text="keep_all()", token_ids=[1, 2])])
            return [SimpleNamespace(prompt_token_ids=i["prompt_token_ids"], **vars(done)) for i in inputs]

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(
        LLM=None, SamplingParams=lambda temperature, max_tokens: SimpleNamespace(max_tokens=max_tokens)))
    engine = StandIn()
    backend = VLLMBackend(str(chaotic_model), ModelConfig(max_new_tokens=12), _llm=engine)
    assert backend.generate(prompts) == ["keep_all()"] * len(prompts)
    trained = [encode_sample(tokenizer, template, chunk, "keep_all()", 1 << 16) for chunk in chunks]
    trained_prompts = [[t for t, label in zip(s["input_ids"], s["labels"]) if label == IGNORE_INDEX] for s in trained]
    assert [i["prompt_token_ids"] for i in engine.seen] == trained_prompts
    assert trained_prompts[0][0] != tokenizer.bos_token_id
    assert backend.stats.input_tokens == sum(map(len, trained_prompts))
