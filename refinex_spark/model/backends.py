"""Inference backends: prompts in, program texts out, greedy so a retried task repeats itself.

`hf` (transformers, CPU or GPU, the default), `vllm` (optional `gpu` extra) and `openai` (HTTP
to any OpenAI-compatible server, e.g. `vllm serve`). Every backend builds its own prompts with
`format_prompt`, because where the chat template is applied differs: locally for `hf`/`vllm`,
by the server for the chat endpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from refinex_spark.config import ModelConfig
from refinex_spark.expert.client import ChatClient, Completion, RetryPolicy
from refinex_spark.model.prompt import build_prompt, user_message
from refinex_spark.refine import PromptRefused


@dataclass(slots=True)
class GenerationStats:
    """Running totals over every `generate` call of one backend instance."""

    prompts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    oom_retries: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    model_id: str
    config: ModelConfig
    stats: GenerationStats

    def format_prompt(self, template: str, chunk_text: str) -> str: ...

    # Raises refine.PromptRefused for a prompt the backend turns down itself (that document's
    # error), anything else for a failure of the backend (the task's). A backend whose prompts
    # succeed or fail one by one may set the raised exception's `outputs` to a str or an exception
    # per prompt: refine then asks again only for the failed ones.
    def generate(self, prompts: list[str]) -> list[str]: ...

    def with_config(self, config: ModelConfig) -> Backend: ...


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    # auto: bf16 where the GPU has it in hardware (fp16 overflows more easily; torch would emulate
    # bf16 on a T4 or V100, far slower than their fp16), fp32 on CPU where half precision is slow and
    # gains nothing.
    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error)
    )


class HFBackend:
    """transformers `generate`, length-sorted micro-batches, left padding, batch halving on OOM.

    `batch_hook`, if given, is called with each micro-batch's size right before it is generated;
    it exists for fault injection (raising an out-of-memory error there drives the halving path
    with the real model) and for instrumentation.
    """

    def __init__(
        self,
        model_path: str,
        config: ModelConfig,
        *,
        batch_hook: Callable[[int], None] | None = None,
        _loaded: tuple[Any, Any] | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.model_id = model_path
        self.device = resolve_device(config.device)
        self.batch_hook = batch_hook
        self.stats = GenerationStats()
        if _loaded is not None:
            self.model, self.tokenizer = _loaded
        else:
            # revision: the hub commit the driver pinned (a local directory has none)
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=config.revision)
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, revision=config.revision, dtype=resolve_dtype(config.dtype, self.device)
            ).to(self.device)
            self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._stop_ids = self._eos_ids()

    def with_config(self, config: ModelConfig) -> HFBackend:
        """Same loaded weights, other generation settings (batch size, max_new_tokens)."""
        return HFBackend(self.model_id, config, batch_hook=self.batch_hook, _loaded=(self.model, self.tokenizer))

    def _eos_ids(self) -> list[int]:
        # The tokenizer's eos is what training appends; the generation config may add others
        # (e.g. Qwen's <|endoftext|> next to <|im_end|>).
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        return sorted(i for i in ids if i is not None)

    def format_prompt(self, template: str, chunk_text: str) -> str:
        return build_prompt(self.tokenizer, template, chunk_text)

    def generate(self, prompts: list[str]) -> list[str]:
        started = time.perf_counter()
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        # Longest first: the batch most likely to run out of memory comes first, so the batch
        # size settles early, and similar lengths share a batch (little padding).
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        outputs: list[str] = [""] * len(prompts)
        batch_size = self.config.batch_size
        pos = 0
        while pos < len(order):
            idx = order[pos : pos + batch_size]
            try:
                texts = self._generate_batch([encoded[i] for i in idx])
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not is_oom(e) or batch_size == 1:
                    raise
                batch_size //= 2
                self.stats.oom_retries += 1
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                continue
            for i, text in zip(idx, texts):
                outputs[i] = text
            pos += len(idx)
        self.stats.prompts += len(prompts)
        self.stats.input_tokens += sum(map(len, encoded))
        self.stats.seconds += time.perf_counter() - started
        return outputs

    def _generate_batch(self, batch: list[list[int]]) -> list[str]:
        if self.batch_hook is not None:
            self.batch_hook(len(batch))
        # The weights' device, not "cuda": a reused worker may since have been given another GPU.
        padded = self.tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **padded,
                do_sample=False,
                max_new_tokens=self.config.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self._stop_ids,
            )
        new_tokens = out[:, padded["input_ids"].shape[1] :].tolist()
        texts = []
        for row in new_tokens:
            cut = next((k for k, t in enumerate(row) if t in self._stop_ids), len(row))
            self.stats.output_tokens += cut
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return texts


class VLLMBackend:
    """vLLM offline generation (the optional `gpu` extra); vllm is imported only here."""

    def __init__(self, model_path: str, config: ModelConfig, *, _llm: Any = None) -> None:
        from vllm import LLM, SamplingParams

        self.config = config
        self.model_id = model_path
        self.stats = GenerationStats()
        dtype = "auto" if config.dtype == "auto" else config.dtype
        self.llm = _llm if _llm is not None else LLM(
            model=model_path, revision=config.revision, tokenizer_revision=config.revision, dtype=dtype, seed=0)
        self.tokenizer = self.llm.get_tokenizer()
        self.sampling = SamplingParams(temperature=0.0, max_tokens=config.max_new_tokens)

    def with_config(self, config: ModelConfig) -> VLLMBackend:
        return VLLMBackend(self.model_id, config, _llm=self.llm)

    def format_prompt(self, template: str, chunk_text: str) -> str:
        return build_prompt(self.tokenizer, template, chunk_text)

    def generate(self, prompts: list[str]) -> list[str]:
        started = time.perf_counter()
        # Token ids, encoded as training and the hf backend encode them: given text, vLLM would add the
        # tokenizer's special tokens (a BOS the model never saw, or a second one after the template's).
        encoded = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        results = self.llm.generate(encoded, self.sampling, use_tqdm=False)
        self.stats.prompts += len(prompts)
        self.stats.input_tokens += sum(len(r.prompt_token_ids or ()) for r in results)
        self.stats.output_tokens += sum(len(r.outputs[0].token_ids) for r in results)
        self.stats.seconds += time.perf_counter() - started
        return [r.outputs[0].text for r in results]


class OpenAIBackend:
    """An OpenAI-compatible HTTP server; `chat` sends the user turn and the server applies the
    model's chat template, `completions` sends the plain-layout prompt as is. Requests, retries
    and reply checks are those of `ChatClient`, the expert's client."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        endpoint: Literal["chat", "completions"] = "chat",
    ) -> None:
        if not config.base_url:
            raise ValueError("the openai backend needs model.base_url")
        self.config = config
        self.endpoint = endpoint
        self.model_id = config.served_model or config.path
        # truncated_ok: a program cut at max_new_tokens keeps its whole ops (the parser rejects the cut line).
        retry = RetryPolicy(max_retries=config.max_retries, backoff_base_s=config.backoff_base_s)
        self.client = ChatClient(config.base_url, self.model_id, api_key=os.environ.get(config.api_key_env),
                                 timeout_s=config.request_timeout_s, retry=retry, endpoint=endpoint, truncated_ok=True)
        self.stats = GenerationStats()

    def with_config(self, config: ModelConfig) -> OpenAIBackend:
        return OpenAIBackend(config, endpoint=self.endpoint)

    def format_prompt(self, template: str, chunk_text: str) -> str:
        return user_message(template, chunk_text) if self.endpoint == "chat" else build_prompt(None, template, chunk_text)

    def generate(self, prompts: list[str]) -> list[str]:
        started = time.perf_counter()
        # Requests are independent; a thread per in-flight request keeps the server's batcher fed.
        with ThreadPoolExecutor(max_workers=min(self.config.batch_size, max(len(prompts), 1))) as pool:
            replies = list(pool.map(self._complete, prompts))
        done = [r for r in replies if isinstance(r, Completion)]
        for reply in done:
            self.stats.input_tokens += reply.prompt_tokens or 0
            self.stats.output_tokens += reply.tokens or 0
        self.stats.prompts += len(done)
        self.stats.seconds += time.perf_counter() - started
        outputs = [r.text or "" if isinstance(r, Completion) else r for r in replies]
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:  # the answers already paid for go with it: only the failed are asked again
            failed.outputs = outputs  # type: ignore[attr-defined]
            raise failed
        return outputs  # type: ignore[return-value]

    def _complete(self, prompt: str) -> Completion | Exception:
        done = self.client.complete(prompt, self.config.max_new_tokens)
        if not done.ok:  # refine records the error on the document's row (or fails the task)
            return (PromptRefused if done.prompt_refused else RuntimeError)(f"{self.client.url}: {done.error}")
        return done


def make_backend(config: ModelConfig, model_path: str | None = None, **options: Any) -> Backend:
    """The backend `config.backend` names; `model_path` overrides `config.path`."""
    path = model_path or config.path
    if config.backend == "hf":
        return HFBackend(path, config, **options)
    if config.backend == "vllm":
        return VLLMBackend(path, config, **options)
    return OpenAIBackend(config, **options)

