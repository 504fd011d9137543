"""Synthetic corpus generator: determinism, deletion-only ground truth, fault behaviour, rates, sizes."""

from __future__ import annotations

import math
import re
from collections import Counter

import Levenshtein
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinex_spark.config import DistillConfig
from refinex_spark.synth import (
    FAULT_RATES,
    NOISE_KINDS,
    SOURCES,
    TOPICS,
    SynthDoc,
    generate_corpus,
    generate_doc,
)

seeds = st.integers(min_value=0, max_value=2**48)


def is_subsequence(short: str, long: str) -> bool:
    it = iter(long)
    return all(c in it for c in short)


def line_deletions_only(short: str, long: str) -> bool:
    """`short` is `long` with whole lines dropped and substrings cut out of the lines it keeps."""
    lines = iter(long.split("\n"))
    return all(any(is_subsequence(s, line) for line in lines) for s in short.split("\n"))


@pytest.fixture(scope="module")
def corpus() -> list[SynthDoc]:
    return list(generate_corpus(500, seed=11, target_chars=(800, 2500)))


# ---------------------------------------------------------------- determinism and corpus layout


@settings(max_examples=50, deadline=None)
@given(seeds, st.integers(200, 5000))
def test_same_seed_same_document(seed: int, target: int) -> None:
    assert generate_doc(seed, target) == generate_doc(seed, target)


def test_different_seeds_differ_and_ids_follow_seed() -> None:
    docs = [generate_doc(s, 1500) for s in range(30)]
    assert len({d.raw for d in docs}) == len(docs)
    assert [d.doc_id for d in docs] == [f"synth-{s:08d}" for s in range(30)]


def test_corpus_is_deterministic_prefix_stable_and_seeded() -> None:
    first = list(generate_corpus(12, seed=5))
    assert first == list(generate_corpus(12, seed=5))
    assert first[:7] == list(generate_corpus(7, seed=5))
    other = list(generate_corpus(12, seed=6))
    assert not {d.doc_id for d in first} & {d.doc_id for d in other}
    assert len({d.doc_id for d in first}) == 12


def test_corpus_zero_with_fixed_size_is_generate_doc_by_index() -> None:
    assert list(generate_corpus(6, seed=0, target_chars=1800)) == [generate_doc(i, 1800) for i in range(6)]


def test_corpus_sizes_spread_log_uniformly_over_the_range() -> None:
    sizes = [len(d.raw) for d in generate_corpus(300, seed=2, target_chars=(1000, 100_000))]
    assert min(sizes) >= 700 and max(sizes) <= 130_000
    # log-uniform: about half the docs fall below the geometric mean of the bounds
    below = sum(s < math.sqrt(1000 * 100_000) for s in sizes) / len(sizes)
    assert 0.4 < below < 0.6


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"seed": -1}, ValueError),
        ({"seed": True}, TypeError),
        ({"seed": 1.5}, TypeError),
        ({"seed": 1, "target_chars": 0}, ValueError),
    ],
)
def test_generate_doc_rejects_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        generate_doc(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n": -1}, ValueError),
        ({"n": 3, "seed": -2}, ValueError),
        ({"n": 3, "target_chars": (500, 100)}, ValueError),
        ({"n": 3, "target_chars": (0, 100)}, ValueError),
        ({"n": 3, "target_chars": "big"}, TypeError),
    ],
)
def test_generate_corpus_validates_eagerly(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        generate_corpus(**kwargs)  # raises before any document is drawn


# ---------------------------------------------------------------- ground truth


@settings(max_examples=200, deadline=None)
@given(seeds, st.integers(1, 5000))
def test_clean_is_raw_with_lines_and_inline_pieces_deleted(seed: int, target: int) -> None:
    doc = generate_doc(seed, target)
    assert is_subsequence(doc.clean, doc.raw)
    assert line_deletions_only(doc.clean, doc.raw)
    assert len(doc.clean) < len(doc.raw) or not doc.noise_kinds
    assert doc.clean.strip() and "\r" not in doc.raw


@settings(max_examples=200, deadline=None)
@given(seeds, st.integers(1, 5000))
def test_expert_equals_clean_exactly_when_there_are_no_faults(seed: int, target: int) -> None:
    doc = generate_doc(seed, target)
    assert (doc.expert == doc.clean) == (not doc.faults)
    assert set(doc.faults) <= set(FAULT_RATES)
    assert len(set(doc.faults)) == len(doc.faults)
    assert "heavy_rewrite" not in doc.faults or doc.faults == ("heavy_rewrite",)


# Independent evidence of each kind: the pattern occurs more often in raw than in clean.
EVIDENCE = {
    "nav": re.compile(r"^(Home\b|Skip to|Menu$|Search  Sign in)", re.M),
    "share": re.compile(r"(?i:share)|Subscribe|Sign up|Follow |Print this|\d Comments$", re.M),
    "cookie": re.compile(r"cookie", re.I),
    "ad": re.compile(r"(?i:advertisement)|Sponsored|\(Ad\)|Click here"),
    "html": re.compile(r"<[/!a-z]|&[#a-z0-9]+;|\{\{|dataLayer"),
    "byline": re.compile(r"^(By|Written by|Reporting by) |Senior Correspondent", re.M),
    "timestamp": re.compile(r"Published|Updated:|GMT|min read|Last modified|hours ago"),
    "footer": re.compile(r"All rights reserved|Privacy Policy|Back to top|Registered in|Do Not Sell|not responsible"),
    "related": re.compile(r"^(Related|Read more|You may also like|Trending now|More from|Recommended|Most popular)", re.M),
    "mojibake": re.compile(r"Ã|â€|â‚"),  # UTF-8 read as cp1252: é -> Ã©, “ -> â€œ, € -> â‚¬
    "blank": re.compile(r"^[ \t]*$", re.M),
}


def test_every_noise_kind_appears_and_is_really_there(corpus: list[SynthDoc]) -> None:
    assert set(EVIDENCE) == set(NOISE_KINDS)
    seen = Counter(k for d in corpus for k in d.noise_kinds)
    assert set(seen) == set(NOISE_KINDS)
    for doc in corpus:
        for kind in doc.noise_kinds:
            pattern = EVIDENCE[kind]
            assert len(pattern.findall(doc.raw)) > len(pattern.findall(doc.clean)), (doc.doc_id, kind)


def test_mojibake_is_noise_only(corpus: list[SynthDoc]) -> None:
    garbled = EVIDENCE["mojibake"]
    with_mojibake = [d for d in corpus if "mojibake" in d.noise_kinds]
    assert with_mojibake
    assert all(garbled.search(d.raw) for d in with_mojibake)
    assert not any(garbled.search(d.clean) for d in corpus)


def test_ads_are_spliced_inside_paragraph_lines(corpus: list[SynthDoc]) -> None:
    # standalone ad lines are short; an ad in a long line sits inside article text
    spliced = [line for d in corpus for line in d.raw.split("\n") if EVIDENCE["ad"].search(line) and len(line) > 120]
    assert len(spliced) > 100


def test_sources_and_topics_all_used(corpus: list[SynthDoc]) -> None:
    assert {d.source for d in corpus} == {s.name for s in SOURCES}
    assert {d.topic for d in corpus} == set(TOPICS)
    by_source = {s.name: set(s.topics) for s in SOURCES}
    assert all(d.topic in by_source[d.source] for d in corpus)


# ---------------------------------------------------------------- faults


def single(corpus: list[SynthDoc], fault: str) -> list[SynthDoc]:
    docs = [d for d in corpus if d.faults == (fault,)]
    assert docs, fault
    return docs


def test_fault_rates_match_configuration(corpus: list[SynthDoc]) -> None:
    n = len(corpus)
    heavy = FAULT_RATES["heavy_rewrite"]
    counts = Counter(f for d in corpus for f in d.faults)
    for fault, rate in FAULT_RATES.items():
        expected = rate if fault == "heavy_rewrite" else rate * (1 - heavy)  # heavy_rewrite is exclusive
        sigma = math.sqrt(expected * (1 - expected) / n)
        assert abs(counts[fault] / n - expected) < 4.5 * sigma, (fault, counts[fault] / n, expected)
    fault_free = (1 - heavy) * math.prod(1 - r for f, r in FAULT_RATES.items() if f != "heavy_rewrite")
    assert 0.55 < fault_free < 0.65  # the design point: ~60% of experts are clean deletions
    observed = sum(not d.faults for d in corpus) / n
    assert abs(observed - fault_free) < 4.5 * math.sqrt(fault_free * (1 - fault_free) / n)


def test_rewrapped_changes_only_whitespace(corpus: list[SynthDoc]) -> None:
    for doc in single(corpus, "rewrapped"):
        assert doc.expert.split() == doc.clean.split()
        assert doc.expert.count("\n") != doc.clean.count("\n")


def test_inserted_words_only_add(corpus: list[SynthDoc]) -> None:
    for doc in single(corpus, "inserted_words"):
        assert len(doc.expert) > len(doc.clean)
        assert is_subsequence(doc.clean, doc.expert)


def test_paraphrase_swaps_a_few_words(corpus: list[SynthDoc]) -> None:
    for doc in single(corpus, "paraphrase"):
        before, after = doc.clean.split(), doc.expert.split()
        assert len(before) == len(after)  # one-for-one word swaps
        assert 1 <= sum(a != b for a, b in zip(before, after)) <= 3


def test_over_deletion_removes_real_text(corpus: list[SynthDoc]) -> None:
    for doc in single(corpus, "over_deletion"):
        assert len(doc.expert) < len(doc.clean)
        assert is_subsequence(doc.expert, doc.clean)
        assert line_deletions_only(doc.expert, doc.raw)  # expressible as a line program


def test_missed_noise_keeps_some_noise_and_stays_a_deletion(corpus: list[SynthDoc]) -> None:
    for doc in single(corpus, "missed_noise"):
        assert len(doc.expert) > len(doc.clean)
        assert is_subsequence(doc.clean, doc.expert)
        assert line_deletions_only(doc.expert, doc.raw)


def test_heavy_rewrite_is_beyond_the_distill_illegal_edit_threshold(corpus: list[SynthDoc]) -> None:
    limit = DistillConfig().max_illegal_fraction
    for doc in single(corpus, "heavy_rewrite"):
        illegal = sum(op != "delete" for op, _, _ in Levenshtein.editops(doc.raw, doc.expert))
        assert illegal / len(doc.raw) > 2 * limit


# ---------------------------------------------------------------- size


@pytest.mark.parametrize("target", [1_000, 3_000, 20_000, 200_000])
def test_size_is_within_30_percent_of_target(target: int) -> None:
    for seed in range(20 if target < 100_000 else 3):
        assert 0.7 * target <= len(generate_doc(seed, target).raw) <= 1.3 * target


def test_one_megabyte_document_is_well_formed() -> None:
    doc = generate_doc(123, 1_000_000)
    assert 700_000 <= len(doc.raw) <= 1_300_000
    assert line_deletions_only(doc.clean, doc.raw)
    assert len(doc.noise_kinds) >= len(NOISE_KINDS) - 1
