"""Fine-tune a causal LM to emit a chunk's program: the `train` stage's model code (no Spark).

`train_model` is a plain function of picklable arguments, so the same call runs in one process
or in every rank under `TorchDistributor`/`torchrun` (the Trainer reads WORLD_SIZE/LOCAL_RANK
and wraps the model in DDP). Rank 0 alone writes the final model, its card and the program
metrics.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from refinex_spark.config import ModelConfig, TrainConfig
from refinex_spark.model.backends import Backend, HFBackend
from refinex_spark.model.prompt import PROMPT_VERSION, build_prompt, template_digest
from refinex_spark.model.sample_file import SampleFile
from refinex_spark.program import parse_program, render_program

IGNORE_INDEX = -100
CHECKPOINTS = "checkpoints"
RUN_IDENTITY = "run.json"  # in CHECKPOINTS: the identity of the run whose checkpoints these are
DONE = "done.json"  # in CHECKPOINTS: the identity of the run whose model output_dir holds
CARD = "README.md"
# Checkpoints kept on disk: resuming needs only the newest; one more survives a torn write.
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True, slots=True)
class TrainResult:
    output_dir: str
    metrics: dict[str, Any]


def held_out(
    n: int, eval_fraction: float, seed: int, max_eval: int, groups: Sequence[str] | None = None,
) -> list[int]:
    """Indices of the seeded held-out samples of `n`, in eval order. Every rank computes the same.

    With `groups` (the document of each sample), whole documents are held out, so the eval
    metrics measure documents the model never saw, not other chunks of a page it trained on;
    the held-out set then has at most, instead of exactly, the target size.
    """
    n_eval = min(max_eval, math.ceil(n * eval_fraction)) if n > 1 else 0
    if groups is None:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return order[:n_eval]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} samples")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    names = sorted(members)
    random.Random(seed).shuffle(names)
    held: list[int] = []
    for name in names:
        if len(held) + len(members[name]) <= n_eval:
            held += members[name]
    return held


def encode_sample(
    tokenizer: Any, template: str, chunk_text: str, program: str, max_seq_len: int
) -> dict[str, list[int]] | None:
    """Token ids and labels for one sample; None when it does not fit `max_seq_len` whole.

    Prompt and program are tokenised separately so the prompt ids are exactly what inference
    feeds the model. Labels cover only the program and its eos. A sample is never cut: a prompt
    missing lines would teach the model to delete lines it cannot see, and a program that leaves
    less than half the sequence for the prompt crowds out its chunk.
    """
    prompt_ids = tokenizer(build_prompt(tokenizer, template, chunk_text), add_special_tokens=False)["input_ids"]
    program_ids = tokenizer(program, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    budget = max_seq_len - len(program_ids)
    if budget < max_seq_len // 2 or len(prompt_ids) > budget:
        return None
    return {"input_ids": prompt_ids + program_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + program_ids}


class _Encoded(torch.utils.data.Dataset):
    """Encoded samples packed into one int32 array, with each row's offset and prompt length.

    Every rank holds every training sample: as lists of Python ints (ids and labels) a token costs
    tens of bytes, here four. Labels are rebuilt per row: the prompt's are IGNORE_INDEX, the rest
    are the ids.
    """

    def __init__(self) -> None:
        self.ids = array("i")
        self.offsets = array("q", [0])
        self.prompt_lens = array("i")

    def append(self, row: dict[str, list[int]]) -> None:
        self.ids.extend(row["input_ids"])
        self.offsets.append(len(self.ids))
        self.prompt_lens.append(row["labels"].count(IGNORE_INDEX))  # program ids are never negative

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def program_lengths(self) -> Iterator[int]:
        """Each row's program tokens, its eos left out."""
        for i, n in enumerate(self.prompt_lens):
            yield self.offsets[i + 1] - self.offsets[i] - n - 1

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, n = self.ids[self.offsets[i]:self.offsets[i + 1]].tolist(), self.prompt_lens[i]
        return {"input_ids": ids, "labels": [IGNORE_INDEX] * n + ids[n:]}


def _encode_all(tokenizer: Any, template: str, pairs: Iterable[tuple[str, str]],
                max_seq_len: int) -> tuple[_Encoded, int]:
    """The trainable samples of `pairs`, packed, and how many were dropped as too long."""
    packed, dropped = _Encoded(), 0
    for chunk_text, program in pairs:
        encoded = encode_sample(tokenizer, template, chunk_text, program, max_seq_len)
        if encoded is None:
            dropped += 1
        else:
            packed.append(encoded)
    return packed, dropped


@dataclass(frozen=True, slots=True)
class _PadCollator:
    pad_id: int

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(r["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def program_metrics(generated: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """valid_program_rate: parsed with no rejection and at least one op; exact_match: also the
    same canonical program as the target."""
    valid = exact = 0
    for text, target in zip(generated, targets, strict=True):
        parsed = parse_program(text)
        if parsed.rejected or not parsed.ops:
            continue
        valid += 1
        exact += render_program(parsed) == render_program(parse_program(target))
    n = len(targets)
    return {"valid_program_rate": valid / n if n else 0.0, "exact_match": exact / n if n else 0.0}


def evaluate_programs(backend: Backend, samples: Sequence[tuple[str, str]], template: str) -> dict[str, float]:
    """Greedy programs for held-out (chunk_text, program) samples, scored by `program_metrics`."""
    prompts = [backend.format_prompt(template, chunk) for chunk, _ in samples]
    return program_metrics(backend.generate(prompts), [program for _, program in samples])


def evaluate_model(model_dir: Path | str, samples: Sequence[tuple[str, str]], template: str, batch_size: int = 8,
                   max_new_tokens: int | None = None) -> dict[str, float]:
    """`evaluate_programs` with the hf backend on a model directory, as training reports it:
    generating at most `max_new_tokens`, as refine will (None: room for the longest target)."""
    backend = HFBackend(str(model_dir), ModelConfig(path=str(model_dir), batch_size=batch_size))
    if max_new_tokens is None:  # the longest target plus a little: a model that runs on past that is wrong anyway
        max_new_tokens = max(len(backend.tokenizer(p, add_special_tokens=False)["input_ids"]) for _, p in samples) + 16
    backend = backend.with_config(backend.config.model_copy(update={"max_new_tokens": max_new_tokens}))
    return evaluate_programs(backend, samples, template)


def _mean_logged_loss(log_history: list[dict[str, Any]], resumed_from: int = 0) -> float | None:
    """Mean training loss over the logged steps, a resumed run's earlier ones included (the Trainer's
    own `training_loss` averages only the steps since the resume, over all of them). Each log entry's
    loss is the mean since the previous entry, or since the resume for the first one after it."""
    total = steps = 0.0
    previous = 0
    for entry in log_history:
        if "loss" in entry:
            if previous < resumed_from < entry["step"]:
                previous = resumed_from  # the steps between the last log and the checkpoint went unlogged
            total += entry["loss"] * (entry["step"] - previous)
            steps += entry["step"] - previous
            previous = entry["step"]
    return total / steps if steps else None


def run_identity(config: TrainConfig, *, base: str, base_revision: str | None, data_version: int | None,
                 fingerprint: str | None, prompt_version: str, template: str, world_size: int) -> dict[str, Any]:
    """What makes two training runs the same run: a resume must match it, and a finished one is not redone."""
    return {
        "base": base if base_revision is None else f"{base}@{base_revision}",
        "data_version": data_version,
        "fingerprint": fingerprint,
        "prompt_version": prompt_version,
        "template": template_digest(template),
        # Resuming under other hyperparameters would train a mix of two runs. Not the `processes`
        # setting but the world size the run has: the Trainer resumes by skipping steps x batches per
        # process, so another world size skips samples never trained or trains some twice. (Left out
        # for one process, so checkpoints written before it was recorded still resume.)
        "train": config.model_dump(exclude={"base", "base_revision", "output_dir", "save_steps", "processes"}),
        **({"world_size": world_size} if world_size != 1 else {}),
    }


def prior_run(output_dir: Path | str, identity: dict[str, Any], resume: bool = True) -> str:
    """What `output_dir` holds of the run `identity`: "trained" (its model is there: nothing to do),
    "resume" (it was cut short: go on from its newest checkpoint) or "fresh" (start it; what is there,
    a finished run of other settings included, is replaced). An unfinished run of other settings is
    refused, its checkpoints being maybe hours of GPU time, unless `resume` is False."""
    ckpt_dir = Path(output_dir) / CHECKPOINTS
    if not resume:
        return "fresh"
    done, marker = ckpt_dir / DONE, ckpt_dir / RUN_IDENTITY
    if done.exists():
        same = json.loads(done.read_text()) == identity and (Path(output_dir) / CARD).exists()
        return "trained" if same else "fresh"
    if not marker.exists():
        return "fresh"
    previous = json.loads(marker.read_text())
    if previous == identity:
        return "resume"
    if _reached_its_end(ckpt_dir):
        return "fresh"  # finished before done.json was written (an earlier release): replaced
    raise ValueError(
        f"checkpoints in {ckpt_dir} belong to another run that did not finish ({previous} != {identity}): "
        "rerun with that run's settings to finish it, or start this one afresh (`train --fresh`, or "
        f"delete {ckpt_dir})"
    )


def _reached_its_end(ckpt_dir: Path) -> bool:
    """Whether the newest checkpoint is a run's last step."""
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if last is None:
        return False
    try:  # the Trainer writes it last: a save cut short has none
        state = json.loads((Path(last) / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step", 0) >= state.get("max_steps", float("inf"))


def _prepare_checkpoints(ckpt_dir: Path, identity: dict[str, Any], state: str, *, owner: bool) -> None:
    """The owner (rank 0) clears what a fresh run replaces, so that no resume picks it up, and records
    the run's identity."""
    if not owner:
        return
    if state == "fresh" and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / RUN_IDENTITY).write_text(json.dumps(identity, sort_keys=True))


def finish_checkpoints(output_dir: Path | str, identity: dict[str, Any]) -> None:
    """Once the model and its card are written: the run is marked done, then its checkpoints (optimizer
    state, several times the model's size) go; a crash between the two leaves them for the next call
    that finds the run "trained"."""
    ckpt_dir = Path(output_dir) / CHECKPOINTS
    (ckpt_dir / DONE).write_text(json.dumps(identity, sort_keys=True))
    for checkpoint in ckpt_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


def write_model_card(output_dir: Path, front_matter: dict[str, Any]) -> Path:
    """README.md with YAML front matter (what the Hub and `report` read) and a short body."""
    refinex = front_matter["refinex"]
    metrics = refinex["metrics"]
    body = (
        "# RefineX refine model\n\n"
        f"Fine-tuned from `{front_matter['base_model']}` to read a numbered chunk of a web document "
        f"(prompt version `{refinex['prompt_version']}`) and emit a deletion program (`remove_lines`, "
        "`remove_str`, `keep_all`). Run it with refinex-spark's `refine` stage: programs are parsed "
        "against a whitelist and executed, never evaluated.\n\n"
        f"Training data: `distill_samples` version {refinex['data_version']}, "
        f"{metrics['n_train']} training samples, {metrics['n_eval']} held out.\n\n"
        f"Held-out greedy programs: valid {metrics.get('valid_program_rate', float('nan')):.3f}, "
        f"exact match {metrics.get('exact_match', float('nan')):.3f}.\n"
    )
    path = output_dir / CARD
    path.write_text("---\n" + yaml.safe_dump(front_matter, sort_keys=False) + "---\n\n" + body, encoding="utf-8")
    return path


def read_model_card(model_dir: Path | str) -> dict[str, Any]:
    """The YAML front matter of a model card written by `write_model_card`."""
    text = (Path(model_dir) / CARD).read_text(encoding="utf-8")
    _, front, _ = text.split("---\n", 2)
    return yaml.safe_load(front)


def _training_args(config: TrainConfig, ckpt_dir: Path, n_rows: int, world_size: int, cuda: bool) -> TrainingArguments:
    batches_per_epoch = math.ceil(n_rows / (config.batch_size * world_size))
    total_steps = math.ceil(config.epochs * math.ceil(batches_per_epoch / config.gradient_accumulation))
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        warmup_steps=0.03,  # a ratio of the total steps
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=KEEP_CHECKPOINTS,
        logging_strategy="steps",
        logging_steps=max(1, min(50, total_steps // 20)),  # ~20 points on the loss curve
        eval_strategy="no",
        seed=config.seed,
        data_seed=config.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(including_emulation=False),  # not emulated (T4, V100)
        use_cpu=not cuda,
        ddp_backend=("nccl" if cuda else "gloo") if world_size > 1 else None,
        ddp_find_unused_parameters=False,  # every parameter of a causal LM gets a gradient
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
    )


def train_model(
    samples: Collection[tuple[str, str]] | SampleFile,
    config: TrainConfig,
    template: str,
    output_dir: str | Path,
    *,
    base: str | None = None,
    base_revision: str | None = None,
    data_version: int | None = None,
    fingerprint: str | None = None,
    resume: bool = True,
    prompt_version: str = PROMPT_VERSION,
    callbacks: Sequence[Any] = (),
    groups: Sequence[str] | None = None,
    max_new_tokens: int | None = None,
    state: str | None = None,
) -> TrainResult:
    """Fine-tune `base` (default `config.base`; a hub id at commit `base_revision`) on
    (chunk_text, program) samples.

    `groups` (each sample's doc_id) makes the held-out split one of whole documents; a
    `SampleFile` brings its own. `max_new_tokens`, refine's generation limit: the held-out
    programs are generated within it, and the training programs longer than it are counted
    (refine would cut them). Samples are read once, in order, and only the held-out ones are
    kept as text: the training set is held as packed token ids.

    Checkpoints go to `output_dir/checkpoints` every `config.save_steps` optimizer steps; with
    `resume` the newest one of the same run (`run_identity`: base, data, fingerprint, prompt,
    hyperparameters) is resumed, and a finished one is not trained again (`prior_run`; `state`, when
    the caller has decided it: every process of a distributed run then acts on the same decision).
    The final model, tokenizer and model card go to `output_dir`; the checkpoints are removed once it
    is there. `callbacks` are extra
    `TrainerCallback`s (progress reporting; tests use one to simulate preemption).
    """
    started = time.perf_counter()
    if base is None:
        base, base_revision = config.base, base_revision or config.base_revision
    out = Path(output_dir)
    ckpt_dir = out / CHECKPOINTS
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.cuda.is_available()
    identity = run_identity(config, base=base, base_revision=base_revision, data_version=data_version,
                            fingerprint=fingerprint, prompt_version=prompt_version, template=template,
                            world_size=world_size)
    if state is None:  # before any sample is read: a refusal costs nothing
        state = prior_run(out, identity, resume)
    if state == "trained":
        if rank == 0:
            finish_checkpoints(out, identity)
        return TrainResult(str(out), {**read_model_card(out)["refinex"]["metrics"], "already_trained": True})

    tokenizer = AutoTokenizer.from_pretrained(base, revision=base_revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if groups is None and isinstance(samples, SampleFile):
        groups = samples.doc_ids()
    n_samples = len(samples)  # of a SampleFile, a read of its footer
    held = held_out(n_samples, config.eval_fraction, config.seed, config.max_eval_samples, groups)
    slots = {i: k for k, i in enumerate(held)}
    eval_pairs: list[tuple[str, str]] = [("", "")] * len(held)

    def train_pairs() -> Iterator[tuple[str, str]]:
        for i, pair in enumerate(samples):
            if i in slots:
                eval_pairs[slots[i]] = pair
            else:
                yield pair

    rows, dropped = _encode_all(tokenizer, template, train_pairs(), config.max_seq_len)
    if not rows:
        raise ValueError(f"no trainable samples: {n_samples} given, none fits max_seq_len={config.max_seq_len}")
    eval_rows = _encode_all(tokenizer, template, eval_pairs, config.max_seq_len)[0]

    _prepare_checkpoints(ckpt_dir, identity, state, owner=rank == 0)
    last = get_last_checkpoint(str(ckpt_dir)) if state == "resume" and ckpt_dir.is_dir() else None
    resumed_from = int(Path(last).name.rsplit("-", 1)[1]) if last else 0

    args = _training_args(config, ckpt_dir, len(rows), world_size, cuda)
    model = AutoModelForCausalLM.from_pretrained(base, revision=base_revision, dtype=torch.float32)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=_PadCollator(tokenizer.pad_token_id),
        train_dataset=rows,
        eval_dataset=eval_rows if eval_rows else None,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=last)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    metrics: dict[str, Any] = {
        "n_train": len(rows),
        "n_eval": len(eval_pairs),
        "eval_held_out_by": "document" if groups is not None else "sample",
        "dropped_too_long": dropped,
        **({"programs_over_max_new_tokens": sum(n > max_new_tokens for n in rows.program_lengths())}
           if max_new_tokens is not None else {}),
        "world_size": world_size,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "completed": trainer.state.global_step >= trainer.state.max_steps,
        "resumed_from_step": resumed_from,
        "train_loss": _mean_logged_loss(trainer.state.log_history, resumed_from),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    if eval_rows:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(out))
    if not trainer.is_world_process_zero():
        return TrainResult(str(out), metrics)

    tokenizer.save_pretrained(out)
    (out / "prompt_template.txt").write_text(template, encoding="utf-8")
    if eval_pairs:
        metrics.update(evaluate_model(out, eval_pairs, template, config.batch_size, max_new_tokens))
    metrics["train_seconds"] = time.perf_counter() - started
    write_model_card(
        out,
        {
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "base_model": base,
            "tags": ["refinex", "refinex-spark", "data-refinement"],
            "refinex": {
                "prompt_version": prompt_version,
                "template_digest": identity["template"],
                "data_version": data_version,
                "config_fingerprint": fingerprint,
                "train_config": config.model_copy(
                    update={"base": base, "base_revision": base_revision, "output_dir": str(out)}).model_dump(mode="json"),
                "metrics": metrics,
            },
        },
    )
    if metrics["completed"]:
        finish_checkpoints(out, identity)
    return TrainResult(str(out), metrics)
