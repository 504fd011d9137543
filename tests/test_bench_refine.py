"""`python -m refinex_spark.bench refine`: the CPU run end to end, and the vocabulary padding of
the GPU model's tokenizer. Figures are checked for shape and consistency, never for speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from rounding import matches, printed, quotient
from refinex_spark.bench import refine as bench
from refinex_spark.model.prompt import load_template
from refinex_spark.model.tiny import train_tokenizer

METRICS = ("input_tokens_per_s", "output_tokens_per_s", "docs_per_s", "chunks_per_s", "seconds",
           "generate_seconds", "input_tokens", "output_tokens", "cpu_seconds", "cpu_core_hours_per_billion_input_tokens")


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    """The same trained tokenizer, as trained and padded to 151,936 ids, both loaded from disk."""
    texts = bench._tokenizer_texts(load_template())[:40]
    root = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, 1024).save_pretrained(root / "plain")
    train_tokenizer(texts, 1024).save_pretrained(root / "padded")
    bench.pad_vocab(root / "padded" / "tokenizer.json", 151_936)
    return AutoTokenizer.from_pretrained(root / "plain"), AutoTokenizer.from_pretrained(root / "padded")


def test_quick_cpu_run_prints_consistent_figures(
    one_torch_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    report = bench.main(["--quick", "--device", "cpu", "--max-new-tokens", "8"])
    assert json.loads(capsys.readouterr().out) == report  # printed exactly what it returns

    assert report["benchmark"] == "refine" and report["quick"] is True
    machine = report["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1 and machine["torch_threads"] == 1
    assert "gpu" in machine and "skipped" in report["cuda"]

    cpu = report["cpu"]
    assert cpu["docs"] == bench.QUICK_DOCS["cpu"] and cpu["model"]["parameters"] > 0
    hf = cpu["backends"]["hf"]
    assert all(hf[k] > 0 for k in METRICS), {k: hf[k] for k in METRICS}
    assert hf["docs"] == cpu["docs"] == sum(hf["statuses"].values())
    assert hf["chunks"] >= hf["docs"] and hf["max_new_tokens"] == 8 and hf["cpu_cores"] == 1
    # Every chunk is one prompt, and generation stops at max_new_tokens at the latest.
    assert 0 < hf["mean_output_tokens_per_chunk"] <= 8
    assert hf["output_tokens"] <= 8 * hf["chunks"]
    tokens_in, tokens_out = (hf["input_tokens"], 0), (hf["output_tokens"], 0)  # counts: printed exactly
    assert matches(hf["input_tokens_per_s"], 1, quotient(tokens_in, printed(hf["seconds"], 3)))
    assert matches(hf["input_output_token_ratio"], 2, quotient(tokens_in, tokens_out))
    assert hf["generate_seconds"] <= hf["seconds"]
    core_hours = quotient(printed(hf["cpu_seconds"], 3), tokens_in)
    assert matches(hf["cpu_core_hours_per_billion_input_tokens"], 1,
                   (core_hours[0] * 1e9 / 3600, core_hours[1] * 1e9 / 3600))
    assert cpu["backends"]["vllm"] == {"skipped": "vllm is measured on GPU only"}

    assert report["targets"]["input_tokens_per_s_at_least"] == bench.TARGET_INPUT_TOKENS_PER_S
    assert report["pass"] == {"cpu": {"hf": None, "vllm": None}}  # the target is a GPU's


@pytest.mark.parametrize("argv", [["--docs", "0"], ["--max-new-tokens", "0"], ["--batch-size", "-1"]])
def test_rejects_non_positive_options(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", *argv])


def test_padded_tokenizer_has_every_id_and_decodes_fillers(padded: tuple) -> None:
    plain, big = padded
    assert len(plain) < len(big) == 151_936
    assert big.decode([151_935]) == "<filler_151935>"
    assert (big.eos_token_id, big.pad_token_id, big.chat_template) == (
        plain.eos_token_id, plain.pad_token_id, plain.chat_template)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_padding_leaves_encoding_unchanged(padded: tuple, text: str) -> None:
    plain, big = padded
    ids = plain(text, add_special_tokens=False)["input_ids"]
    assert big(text, add_special_tokens=False)["input_ids"] == ids
    assert big.decode(ids) == plain.decode(ids)


def test_padding_refuses_to_shrink(tmp_path: Path) -> None:
    train_tokenizer(["some text to learn from"] * 3, 300).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="more than 10"):
        bench.pad_vocab(tmp_path / "tokenizer.json", 10)
