"""`python -m refinex_spark.bench refine`: refine model throughput, per device and backend.

Prints one JSON object. Each measured run goes through `refine_batch`, the function the refine
stage maps over its Arrow batches, so the figures cover the stage's whole per-batch path:
chunking, prompt building, tokenisation, generation, program execution and verification.

- cpu (unless `--device cuda`): the tiny Qwen3 of the tests and the demo, `hf` backend;
- cuda (whenever torch sees a GPU, or with `--device cuda`): a Qwen3-0.6B-shaped model with
  random weights in bfloat16 (the shape decides the speed, the weights do not), `hf` and, where
  it is installed, `vllm`.
Both models are built here, with a tokenizer trained on synthetic documents (no hub, no
network); the 0.6B model's tokenizer vocabulary is padded to the model's 151,936 embeddings so
every id the model can emit decodes. Random weights almost never emit the stop token, so
generation runs to `--max-new-tokens`: that is the fixed output length, and the report gives
the input:output token ratio that it implies. Tokens are counted by the backend's tokenizer
(`GenerationStats`). One warm-up batch on other documents runs first and is not timed.

Per backend: input and output tokens/s, docs/s, chunks/s and, on a GPU, GPU-hours per billion
input tokens (on CPU: core-hours from the process's CPU time, with the number of threads torch
used). `targets` holds the throughput target for one H100; `pass` says per device and backend
whether it was met (null where it does not apply: on CPU, on another GPU, or a backend that did not
run). Documents go to `refine_batch` in calls of the stage's Arrow batch size on that device's
deployment (`--docs-per-call`). vLLM's peak memory is null: its engine is another process.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from transformers import Qwen3ForCausalLM

from ..config import Config, ModelConfig, load_config
from ..model.backends import Backend, make_backend
from ..model.prompt import load_template
from ..model.tiny import build_tiny_model, qwen3_0_6b_config, train_tokenizer
from ..refine import BatchStats, refine_batch
from ..synth import generate_corpus

Device = Literal["cpu", "cuda"]
BACKENDS = ("hf", "vllm")
TARGET_INPUT_TOKENS_PER_S = 150_000.0  # on one H100; 1e9 / 150k / 3600 = 1.85 GPU-hours per billion
# Synthetic text saturates a BPE vocabulary at about 5k tokens, where it encodes ~4 chars per
# token, as English BPE does on web text; asking for more changes nothing.
TOKENIZER_VOCAB = 8192
DOC_CHARS = (1_000, 12_000)  # single-chunk pages and multi-chunk articles (a chunk is ~6,000 chars)
SEEDS = {"tokenizer": 1, "warmup": 2, "docs": 3, "model": 0}
DEFAULT_DOCS = {"cpu": 128, "cuda": 2_000}
QUICK_DOCS = {"cpu": 4, "cuda": 64}
DEFAULT_BATCH_SIZE = {"cpu": ModelConfig().batch_size, "cuda": 64}
DTYPE = {"cpu": "float32", "cuda": "bfloat16"}
# The deployment whose Arrow batches (spark.sql.execution.arrow.maxRecordsPerBatch: the most docs one
# refine_batch call gets) each device's run takes: the local runs on CPU, a GPU cluster's on CUDA.
ENV = {"cpu": "local", "cuda": "yarn"}
SPARK_ARROW_BATCH = 10_000  # Spark's own default
# Random weights write to --max-new-tokens; by default about what real programs take: bench core's
# token economy is ~0.1 program tokens per chunk token, on ~1,100-token prompts.
DEFAULT_MAX_NEW_TOKENS = 128

Doc = tuple[str, str, str]  # (doc_id, text, text_hash), as refine_batch takes them


def _docs(n: int, seed: int) -> list[Doc]:
    return [(d.doc_id, d.raw, hashlib.sha256(d.raw.encode("utf-8")).hexdigest())
            for d in generate_corpus(n, seed=seed, target_chars=DOC_CHARS)]


def _tokenizer_texts(template: str) -> list[str]:
    """What the tokenizer learns from: the instruction and documents other than the measured ones."""
    return [template, *(d.raw for d in generate_corpus(300, seed=SEEDS["tokenizer"], target_chars=DOC_CHARS))]


def pad_vocab(tokenizer_json: Path, size: int) -> None:
    """Append filler tokens to a saved fast tokenizer until it has `size` ids; encoding is unchanged.

    A model with a larger embedding than its tokenizer emits ids the tokenizer cannot decode,
    which a real checkpoint never does (and which breaks vLLM's incremental detokeniser). The
    fillers have no merges leading to them, so no text ever encodes to one.
    """
    state = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab: dict[str, int] = state["model"]["vocab"]
    if len(vocab) > size:
        raise ValueError(f"{tokenizer_json} has {len(vocab)} ids, more than {size}")
    # Printable ASCII maps to itself in the byte-level alphabet, so the fillers decode as written.
    vocab.update({f"<filler_{i}>": i for i in range(len(vocab), size)})
    tokenizer_json.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")


def build_qwen3_0_6b(out_dir: Path, texts: Iterable[str], device: str = "cuda") -> tuple[Path, int]:
    """A randomly initialised Qwen3-0.6B-shaped model in bfloat16 with a padded local tokenizer,
    saved to `out_dir`; and its parameter count. Initialised on `device` (fast on a GPU)."""
    config = qwen3_0_6b_config()
    tokenizer = train_tokenizer(texts, TOKENIZER_VOCAB)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(SEEDS["model"])
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    pad_vocab(out_dir / "tokenizer.json", config.vocab_size)
    n_params = model.num_parameters()
    del model
    return out_dir, n_params


def _sync(device: Device) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def arrow_batch(device: Device) -> int:
    """Docs per refine_batch call in the stage on `device`'s deployment (`ENV`)."""
    return int(load_config(env=ENV[device]).spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch",
                                                           SPARK_ARROW_BATCH))


def measure(backend: Backend, template: str, config: Config, warmup: Sequence[Doc], docs: Sequence[Doc],
            device: Device, docs_per_call: int = SPARK_ARROW_BATCH) -> dict[str, Any]:
    """Time `refine_batch` over `docs` (in calls of `docs_per_call`) after one untimed warm-up call."""
    refine_batch(warmup, backend, template, config)
    before = backend.stats.as_dict()
    stats = BatchStats()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(0, len(docs), docs_per_call):
        refine_batch(docs[i:i + docs_per_call], backend, template, config, stats)
    _sync(device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    gen = {k: v - before[k] for k, v in backend.stats.as_dict().items()}
    tokens_in, tokens_out, prompts = int(gen["input_tokens"]), int(gen["output_tokens"]), int(gen["prompts"])
    in_rate = tokens_in / seconds
    result: dict[str, Any] = {
        "docs": stats.docs,
        "chunks": stats.chunks,
        "input_chars": stats.input_chars,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "seconds": round(seconds, 3),
        "generate_seconds": round(gen["seconds"], 3),  # inside backend.generate; the rest is chunking, prompts, execution
        "input_tokens_per_s": round(in_rate, 1),
        "output_tokens_per_s": round(tokens_out / seconds, 1),
        "docs_per_s": round(stats.docs / seconds, 3),
        "chunks_per_s": round(stats.chunks / seconds, 3),
        "mean_input_tokens_per_chunk": round(tokens_in / prompts, 1),
        "mean_output_tokens_per_chunk": round(tokens_out / prompts, 2),
        "input_output_token_ratio": round(tokens_in / tokens_out, 2) if tokens_out else None,
        # Document chars per prompt token: what one input token buys, the instruction included.
        "doc_chars_per_input_token": round(stats.input_chars / tokens_in, 3),
        "statuses": stats.statuses,
        "oom_retries": int(gen["oom_retries"]),
    }
    if device == "cuda":
        result["gpu_hours_per_billion_input_tokens"] = round(1e9 / in_rate / 3600, 3)
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        # From the CPU time this process used (all its threads), not wall time x threads: on a
        # shared machine the wall clock also counts the neighbours' work.
        result["cpu_cores"] = torch.get_num_threads()
        result["cpu_seconds"] = round(cpu_seconds, 3)
        result["cpu_core_hours_per_billion_input_tokens"] = round(cpu_seconds / tokens_in * 1e9 / 3600, 1)
    return result


def _run_backend(name: str, model_path: Path, device: Device, args: argparse.Namespace, template: str,
                 config: Config, warmup: Sequence[Doc], docs: Sequence[Doc]) -> dict[str, Any]:
    model = ModelConfig(path=str(model_path), backend=name, device=device, dtype=DTYPE[device],
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size or DEFAULT_BATCH_SIZE[device])
    started = time.perf_counter()
    backend = make_backend(model)
    load_s = time.perf_counter() - started
    docs_per_call = args.docs_per_call or arrow_batch(device)
    settings = {"batch_size": model.batch_size, "max_new_tokens": model.max_new_tokens, "dtype": model.dtype,
                "docs_per_call": docs_per_call, "load_seconds": round(load_s, 2)}
    result = settings | measure(backend, template, config, warmup, docs, device, docs_per_call)
    if name == "vllm":  # its engine (weights, KV cache) lives in a process of its own: not this one's allocator
        result["peak_gpu_memory_gib"] = None
    return result


def _run_device(device: Device, args: argparse.Namespace, template: str, config: Config, workdir: Path) -> dict[str, Any]:
    n_docs = args.docs or (QUICK_DOCS if args.quick else DEFAULT_DOCS)[device]
    docs = _docs(n_docs, SEEDS["docs"])
    # One full micro-batch (the GPU's allocator and kernels settle on it), never more than is measured.
    warmup = _docs(min(args.batch_size or DEFAULT_BATCH_SIZE[device], n_docs), SEEDS["warmup"])
    texts = _tokenizer_texts(template)
    started = time.perf_counter()
    if device == "cuda":
        path, n_params = build_qwen3_0_6b(workdir / "qwen3-0.6b-random", texts)
        gc.collect()
        torch.cuda.empty_cache()  # the build's fp32 initialisation: vLLM sizes itself by the memory free
        shape = "qwen3-0.6b (random weights)"
    else:
        path = build_tiny_model(workdir / "tiny", texts, vocab_size=TOKENIZER_VOCAB, seed=SEEDS["model"])
        n_params = Qwen3ForCausalLM.from_pretrained(path).num_parameters()
        shape = "tiny qwen3 (random weights)"
    report: dict[str, Any] = {
        "model": {"shape": shape, "parameters": n_params, "build_seconds": round(time.perf_counter() - started, 2)},
        "docs": len(docs), "doc_chars": list(DOC_CHARS), "warmup_docs": len(warmup), "backends": {},
    }
    for name in BACKENDS if args.backend == "all" else (args.backend,):
        if name == "vllm" and device == "cpu":
            result: dict[str, Any] = {"skipped": "vllm is measured on GPU only"}
        elif name == "vllm" and importlib.util.find_spec("vllm") is None:
            result = {"skipped": "vllm not installed"}
        elif name == "vllm":
            # vLLM pins its own torch and transformers; a mismatch with this environment must
            # not lose the figures already measured, so its failure is recorded, not raised.
            try:
                result = _run_backend(name, path, device, args, template, config, warmup, docs)
            except Exception as e:  # noqa: BLE001 - recorded in the report
                result = {"error": f"{type(e).__name__}: {e}"[:2000]}
        else:
            result = _run_backend(name, path, device, args, template, config, warmup, docs)
        report["backends"][name] = result
        # The next backend (vLLM takes most of the GPU memory it finds free) needs this one's memory back.
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return report


def _passed(device: Device, result: dict[str, Any]) -> bool | None:
    """Against the target where it applies: on an H100 (another GPU is measured, not judged)."""
    if device != "cuda" or "input_tokens_per_s" not in result or "H100" not in torch.cuda.get_device_name():
        return None
    return result["input_tokens_per_s"] >= TARGET_INPUT_TOKENS_PER_S


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m refinex_spark.bench refine")
    ap.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: the CPU, and the GPU too when torch sees one")
    ap.add_argument("--docs", type=int, default=None,
                    help=f"documents per device (default cpu {DEFAULT_DOCS['cpu']}, cuda {DEFAULT_DOCS['cuda']})")
    ap.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                    help=f"fixed generation length per chunk (default {DEFAULT_MAX_NEW_TOKENS}, "
                         "about a real program's)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help=f"model micro-batch (default cpu {DEFAULT_BATCH_SIZE['cpu']}, cuda {DEFAULT_BATCH_SIZE['cuda']})")
    ap.add_argument("--docs-per-call", type=int, default=None,
                    help="documents per refine_batch call (default: per Arrow batch in the stage, as "
                         f"conf/{ENV['cpu']}.yaml sets it on cpu and conf/{ENV['cuda']}.yaml on cuda)")
    ap.add_argument("--quick", action="store_true", help="a few documents (for tests)")
    args = ap.parse_args(argv)
    for name in ("docs", "max_new_tokens", "batch_size", "docs_per_call"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        ap.error("--device cuda: torch sees no CUDA device")
    devices: list[Device] = {"cpu": ["cpu"], "cuda": ["cuda"], "auto": ["cpu", "cuda"] if cuda else ["cpu"]}[args.device]

    config = Config()
    template = load_template(config.model.prompt_version)
    report: dict[str, Any] = {
        "benchmark": "refine",
        "quick": args.quick,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "cuda": torch.version.cuda if cuda else None,
        },
        "prompt_version": config.model.prompt_version,
        "token_budget": config.chunking.token_budget,
        "max_new_tokens": args.max_new_tokens,
    }
    with tempfile.TemporaryDirectory(prefix="refinex-bench-refine-") as work:
        for device in devices:
            report[device] = _run_device(device, args, template, config, Path(work))
    if "cuda" not in devices:
        report["cuda"] = {"skipped": "torch sees no CUDA device" if not cuda else "not asked for (--device cpu)"}
    report["targets"] = {"device": "one H100 (cuda)", "input_tokens_per_s_at_least": TARGET_INPUT_TOKENS_PER_S}
    report["pass"] = {device: {name: _passed(device, result) for name, result in report[device]["backends"].items()}
                      for device in devices}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
