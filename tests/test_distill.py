"""Distillation: raw vs expert alignment -> deletion program, filters, samples, stats."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, HealthCheck, given, settings
from hypothesis import strategies as st

from refinex_spark.chunking import split_lines
from refinex_spark.config import ChunkingConfig, DistillConfig, ProgramConfig
from refinex_spark.distill import (
    DROP_REASONS,
    distill,
    distill_program,
    keep_all_sampled,
    shingle_f1,
)
from refinex_spark.program import ChunkProgram, apply_program, execute, parse_program

ROOT = Path(__file__).resolve().parent.parent


def squash(text: str) -> str:
    return " ".join(text.split())


def ops_of(program: str) -> list[tuple]:
    """Edit ops as tuples (keep_all() is no op)."""
    parsed = parse_program(program)
    assert not parsed.rejected
    return [(op.kind, op.start, op.end, op.line, op.text) for op in parsed.ops if op.kind != "keep_all"]


def run(raw: str, program: str) -> str:
    refinement = execute(raw, program)
    assert refinement.n_rejected == 0, refinement.outcomes
    return refinement.text


# --- alignment cases -------------------------------------------------------------------------


def test_pure_line_deletions_merge_into_ranges() -> None:
    raw = "Title\nHome | About | Contact\nLogin\nBody one.\nBody two.\nShare on X\nFollow us"
    expert = "Title\nBody one.\nBody two."
    result = distill(raw, expert)
    assert ops_of(result.program) == [
        ("remove_lines", 1, 2, None, None),
        ("remove_lines", 5, 6, None, None),
    ]
    assert run(raw, result.program) == expert
    s = result.stats
    assert (s.inserted_chars, s.replaced_chars, s.n_ops, s.fidelity) == (0, 0, 2, 1.0)
    assert s.deleted_chars == len(raw) - len(expert)


def test_deleted_ad_block_takes_its_blank_separator_but_paragraphs_keep_theirs() -> None:
    raw = "Para one.\n\nADVERTISEMENT\nBuy now\n\nPara two."
    expert = "Para one.\n\nPara two."
    program = distill_program(raw, expert)
    assert ops_of(program) == [("remove_lines", 2, 4, None, None)]
    assert run(raw, program) == expert


def test_lone_blank_line_deletion_is_ignored() -> None:
    assert distill_program("a line\n\nanother line", "a line\nanother line") == "keep_all()"


def test_partial_deletion_inside_a_line() -> None:
    raw = "Read the full story. Share this article on Facebook! The end."
    expert = "Read the full story. The end."
    program = distill_program(raw, expert)
    [(kind, _, _, line, text)] = ops_of(program)
    assert (kind, line) == ("remove_str", 0)
    assert squash(text) == "Share this article on Facebook!"
    assert run(raw, program) == expert


def test_ad_spliced_mid_line_without_spaces() -> None:
    raw = "first line\nThe committee approved[Sponsored: cheap flights] the budget.\nlast line"
    expert = "first line\nThe committee approved the budget.\nlast line"
    program = distill_program(raw, expert)
    assert ops_of(program) == [("remove_str", None, None, 1, "[Sponsored: cheap flights]")]
    assert run(raw, program) == expert


def test_remove_str_that_would_over_delete_is_not_emitted() -> None:
    raw = "Intro. Click here! Results. Click here! The end."
    expert = "Intro. Results. Click here! The end."
    result = distill(raw, expert)
    assert result.program == "keep_all()"  # "Click here! " and " Click here!" both occur twice
    assert run(raw, result.program) == raw
    assert result.stats.fidelity < 1.0


def test_repeated_text_is_removed_when_every_occurrence_was_deleted() -> None:
    raw = "Intro AD-BANNER middle AD-BANNER outro"
    expert = "Intro middle outro"
    program = distill_program(raw, expert)
    assert [squash(text) for *_, text in ops_of(program)] == ["AD-BANNER"]
    assert squash(run(raw, program)) == expert


def test_equivalent_shifted_deletion_is_used_when_the_aligned_one_is_ambiguous() -> None:
    # The aligner may delete "x-x-x" or "-x-x-"; only one of them is unique in the line.
    raw = "x-x-x-x- keep x-y"
    expert = "x-x- keep x-y"
    program = distill_program(raw, expert)
    assert len(ops_of(program)) == 1
    assert run(raw, program) == expert


@pytest.mark.parametrize("raw, expert, removed", [
    ("The storm[1]\xa0hit the coast.", "The storm hit the coast.", "[1]"),  # a no-break space became a space
    ("The storm[1]\nhit the coast.", "The storm hit the coast.", "[1]"),  # a hard-wrapped line was joined
    ("Share this on Twitter:The\xa0storm hit the coast.", "The storm hit the coast.", "Share this on Twitter:"),
])
def test_whitespace_the_expert_retyped_does_not_move_the_deletion(raw: str, expert: str, removed: str) -> None:
    """A changed whitespace char is no edit: aligned as a substitution it would tie with pairing a
    deleted char with the expert's space, leaving noise in and cutting kept words."""
    result = distill(raw, expert)
    assert squash(run(raw, result.program)) == squash(expert)
    assert squash(run(raw, result.program)) == squash(raw.replace(removed, "", 1))
    assert result.stats.replaced_chars == 0 and all(s.kept for s in result.samples)


@pytest.mark.parametrize("raw, expert, op", [
    ("Home News Sports Home", "Home News Sports", " Home"),  # the last word: with the space before it
    ("Home a Home b", "Home a b", " Home"),
    ("Share x Share", "x Share", "Share "),  # the first word: with the space after it
])
def test_a_repeated_word_is_removed_with_its_space_where_that_occurs_once(raw: str, expert: str, op: str) -> None:
    program = distill_program(raw, expert)
    assert ops_of(program) == [("remove_str", None, None, 0, op)]
    assert squash(run(raw, program)) == squash(expert)


def test_a_span_that_stays_repeated_keeps_its_shifted_equivalent() -> None:
    """Grown over its spaces, "vote  " is still repeated; the plain span's shifted equivalent
    ("ote  v", once in the line) still expresses the deletion."""
    raw = "Read more  passed  vote  é  Home  News  vote  vote  the"
    expert = "Read more  passed  vote  é  Home  News  vote  the"
    assert squash(run(raw, distill_program(raw, expert))) == squash(expert)


def test_short_and_whitespace_only_deletions_are_skipped() -> None:
    raw = "colour  and   flavour of the item"
    expert = "color and flavor of the item"  # 1-char deletions and collapsed spaces
    result = distill(raw, expert)
    assert result.program == "keep_all()"
    assert result.stats.illegal_fraction == 0.0


def test_line_with_all_content_deleted_becomes_remove_lines() -> None:
    raw = "keep me\n   Share | Tweet   \nkeep me too"
    expert = "keep me\n\nkeep me too"  # the expert kept an empty line
    assert ops_of(distill_program(raw, expert)) == [("remove_lines", 1, 1, None, None)]


def test_rewrapped_paragraph_aligns_without_illegal_edits() -> None:
    raw = "The quick brown fox jumps\nover the lazy dog while the\ncat watches from the fence."
    expert = "The quick brown\nfox jumps over the lazy dog\nwhile the cat watches from\nthe fence."
    result = distill(raw, expert)
    assert result.program == "keep_all()"
    assert (result.stats.inserted_chars, result.stats.replaced_chars) == (0, 0)
    assert result.stats.fidelity == 1.0


def test_rewrapped_paragraph_with_a_deletion_inside() -> None:
    raw = "The quick brown fox jumps [ad] over\nthe lazy dog. Subscribe now! The cat\nwatches."
    expert = "The quick brown fox jumps over the\nlazy dog. The cat watches."
    program = distill_program(raw, expert)
    assert [kind for kind, *_ in ops_of(program)] == ["remove_str", "remove_str"]
    assert squash(run(raw, program)) == squash(expert)


def test_merged_lines_align_and_a_deleted_line_between_them_is_removed() -> None:
    raw = "Breaking news from the city\nShare on Facebook\ncouncil: the bridge reopens today."
    expert = "Breaking news from the city council: the bridge reopens today."
    result = distill(raw, expert)
    assert ops_of(result.program) == [("remove_lines", 1, 1, None, None)]
    assert result.stats.illegal_fraction == 0.0
    assert squash(run(raw, result.program)) == expert


def test_deleted_menu_sharing_words_with_the_paragraph_below() -> None:
    # One run of unequal lines: every embedding of the kept words costs the same, and matching
    # them inside the menu line would leave both lines partly deleted.
    raw = (
        "Related: cook the onions until golden | Most popular\n"
        "Cooks said they cook the onions until golden [AD: cheap pans] at least weekly."
    )
    expert = "Cooks said they cook the onions until golden at least weekly."
    program = distill_program(raw, expert)
    assert ops_of(program)[0] == ("remove_lines", 0, 0, None, None)
    assert squash(run(raw, program)) == expert


def test_a_deleted_line_is_not_paired_with_a_kept_line_that_has_an_equal_copy() -> None:
    # Substitution-cost alignment ties "Skip to content" -> "The vote passed." with the true
    # match, and reads a pure deletion as a rewrite (dropped as illegal_edits).
    raw = "Skip to content\nThe vote passed.\nThe vote passed. Share this story"
    expert = "The vote passed.\nThe vote passed."
    result = distill(raw, expert)
    assert ops_of(result.program) == [("remove_lines", 0, 0, None, None),
                                      ("remove_str", None, None, 2, "Share this story")]
    assert squash(run(raw, result.program)) == squash(expert)
    assert (result.stats.inserted_chars, result.stats.replaced_chars, result.stats.kept) == (0, 0, True)


def test_distilled_programs_are_refinex_whatever_the_runs_dialect() -> None:
    raw, expert = "Title\nMenu | Home\nBody one.\nShare on X", "Title\nBody one."
    result = distill(raw, expert, program=ProgramConfig(dialect="prox"))
    assert ops_of(result.program) == [("remove_lines", 1, 1, None, None), ("remove_lines", 3, 3, None, None)]
    assert (result.stats.deleted_chars, result.stats.fidelity) == (len(raw) - len(expert), 1.0)


def test_where_the_expert_also_rewrote_no_deletion_cuts_a_word() -> None:
    # "Cookie Settings" -> "Cookies": letters of the rewrite matched inside "Settings" would
    # make remove_str(" Setting"), which teaches cutting words, not removing noise.
    raw = "Intro line that is kept.\nYou can change this any time in Cookie Settings.\nBody text kept here."
    expert = "Intro line that is kept.\nYou may change this at any time in Cookies.\nBody text kept here."
    result = distill(raw, expert)
    assert result.stats.replaced_chars > 0 and ops_of(result.program) == []
    # A pure deletion keeps its ops, at word boundaries or not.
    assert ops_of(distill("Price: 12 EURxxx today", "Price: 12 EUR today").program) == [
        ("remove_str", None, None, 0, "xxx")]


def test_rewrite_too_large_to_align_is_counted_as_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    import refinex_spark.distill as distill_module

    monkeypatch.setattr(distill_module, "_MAX_CELLS", 10)
    raw = "alpha beta gamma delta epsilon\nzeta eta theta"
    expert = "one two three four five six\nseven"
    result = distill(raw, expert)
    assert result.program == "keep_all()"
    assert result.stats.replaced_chars == len("".join(expert.split()))
    assert result.stats.drop_reason == "illegal_edits"


def test_unknown_alignment_is_refused() -> None:
    with pytest.raises(ValueError, match="alignment"):
        distill("a", "a", alignment="fuzzy")  # type: ignore[arg-type]


def test_paraphrase_counts_replaced_chars_and_is_dropped() -> None:
    raw = "The results were good and the team was happy with them."
    expert = "The outcome was great and the staff felt pleased about it."
    result = distill(raw, expert)
    s = result.stats
    assert s.replaced_chars > 0
    assert s.illegal_fraction == (s.inserted_chars + s.replaced_chars) / s.raw_chars
    assert (s.kept, s.drop_reason) == (False, "illegal_edits")
    assert all(not x.kept and x.drop_reason == "illegal_edits" for x in result.samples)


def test_insertion_counts_inserted_chars() -> None:
    raw = "Line one of the text.\nLine two of the text.\nLine three of the text."
    expert = "Line one of the text.\nAn added sentence.\nLine two of the text.\nLine three of the text."
    s = distill(raw, expert).stats
    assert s.inserted_chars == len("Anaddedsentence.")
    assert s.replaced_chars == 0
    assert s.drop_reason == "illegal_edits"  # 16 / 68 chars > 5%
    lenient = distill(raw, expert, DistillConfig(max_illegal_fraction=0.5)).stats
    assert (lenient.kept, lenient.drop_reason) == (True, None)


def test_whitespace_only_insertions_are_legal() -> None:
    s = distill("a b c d e f", "a  b\n c   d e\tf").stats
    assert (s.inserted_chars, s.replaced_chars, s.kept) == (0, 0, True)


def test_expert_deleting_everything_is_dropped() -> None:
    raw = "Cookie banner\nAccept all\nReject all\nprivacy policy and terms of use"
    result = distill(raw, "")
    assert ops_of(result.program) == [("remove_lines", 0, 3, None, None)]
    assert result.stats.deleted_fraction == 1.0
    assert (result.stats.kept, result.stats.drop_reason) == (False, "deletes_everything")
    assert {x.drop_reason for x in result.samples} == {"deletes_everything"}


def test_deleted_fraction_threshold() -> None:
    raw = "\n".join(f"line number {i}" for i in range(10))
    expert = "line number 0"
    cfg = DistillConfig(max_deleted_fraction=0.95)
    assert distill(raw, expert, cfg).stats.kept
    assert distill(raw, expert, DistillConfig(max_deleted_fraction=0.5)).stats.drop_reason == "deletes_everything"


def test_empty_documents() -> None:
    result = distill("", "")
    assert result.program == "keep_all()"
    assert result.stats.fidelity == 1.0 and result.stats.kept
    assert distill("", "invented text").stats.drop_reason == "illegal_edits"


def test_flat_alignment_builds_the_same_program_on_simple_cases() -> None:
    raw = "Title\nMenu | Home\nBody text here. Click to subscribe! More body.\nFooter (c) 2024"
    expert = "Title\nBody text here. More body."
    hier, flat = distill(raw, expert), distill(raw, expert, alignment="flat")
    assert hier.program == flat.program
    assert hier.stats == flat.stats


# --- samples, chunks and filters -------------------------------------------------------------


def test_multi_chunk_samples_use_global_line_numbers() -> None:
    lines = [f"Paragraph {i} has some ordinary words in it." for i in range(40)]
    for i in (3, 4, 5, 17, 18, 31):
        lines[i] = f"SPONSORED CONTENT number {i} click here"
    lines[25] = "Paragraph 25 text. Share this page now! More text."
    raw = "\n".join(lines)
    expert = "\n".join(
        "Paragraph 25 text. More text." if i == 25 else line
        for i, line in enumerate(lines) if not line.startswith("SPONSORED")
    )
    chunking = ChunkingConfig(token_budget=64)
    result = distill(raw, expert, DistillConfig(keep_all_ratio=1.0), chunking)
    samples = result.samples
    assert len(samples) == result.stats.n_chunks > 3
    assert [s.chunk_index for s in samples] == list(range(len(samples)))
    assert samples[0].start_line == 0 and samples[-1].end_line == 39
    for a, b in zip(samples, samples[1:]):
        assert b.start_line == a.end_line + 1
    removed = set()
    for s in samples:
        assert s.prompt.split("\n")[0].startswith(f"[{s.start_line:03d}] ")
        for kind, start, end, line, _ in ops_of(s.program):
            first, last = (start, end) if kind == "remove_lines" else (line, line)
            assert s.start_line <= first <= last <= s.end_line
            if kind == "remove_lines":
                removed |= set(range(start, end + 1))
        assert s.n_ops == len(ops_of(s.program))
    assert removed == {3, 4, 5, 17, 18, 31}
    per_chunk = execute(raw, [ChunkProgram(s.start_line, s.end_line, s.program) for s in samples])
    assert per_chunk.text == expert == run(raw, result.program)
    assert result.stats.fidelity == 1.0


def test_truncated_line_is_removable_only_whole() -> None:
    long_line = "word " * 200 + "TAIL-AD"
    raw = f"short line\n{long_line}\nHEADER-AD gone entirely\nend"
    expert = f"short line\n{'word ' * 200}\nend"
    chunking = ChunkingConfig(token_budget=64)
    result = distill(raw, expert, chunking=chunking)
    assert [op for s in result.samples for op in ops_of(s.program)] == [("remove_lines", 2, 2, None, None)]
    # The whole-document program sees the line in full.
    assert ("remove_str", None, None, 1, "TAIL-AD") in ops_of(result.program)
    roomy = distill(raw, expert, chunking=ChunkingConfig(token_budget=4096))
    assert ("remove_str", None, None, 1, "TAIL-AD") in [op for s in roomy.samples for op in ops_of(s.program)]


def test_too_many_ops_drops_only_that_chunk() -> None:
    busy = " ".join(f"w{i} [AD{i}]" for i in range(5))
    clean = "\n".join(f"clean line number {i} with a few more words" for i in range(12))
    raw, expert = f"{busy}\n{clean}", f"{' '.join(f'w{i}' for i in range(5))}\n{clean}"
    cfg = DistillConfig(max_ops_per_chunk=3, keep_all_ratio=1.0)
    result = distill(raw, expert, cfg, ChunkingConfig(token_budget=64))
    assert result.stats.n_chunks > 1
    by_line = {s.start_line: s for s in result.samples}
    assert by_line[0].n_ops == 5
    assert (by_line[0].kept, by_line[0].drop_reason) == (False, "too_many_ops")
    assert all(s.kept for s in result.samples if s.start_line > 0)
    assert result.stats.kept  # a doc-level verdict; only the chunk sample is dropped


def test_chunks_missing_what_the_expert_deleted_are_dropped_as_unexpressible() -> None:
    everything = DistillConfig(keep_all_ratio=1.0)
    # One of two equal phrases deleted: remove_str would delete both, so the program keeps it.
    result = distill("Intro. Click here! Results. Click here! The end.", "Intro. Results. Click here! The end.",
                     everything)
    assert [(s.program, s.kept, s.drop_reason) for s in result.samples] == [("keep_all()", False, "unexpressible")]
    # A line too long to show whole may only be removed whole: keeping it misses nothing the
    # model could have done (here the noise is even in its hidden part).
    raw = "word " * 700 + "BUY NOW CHEAP PILLS"
    (sample,) = distill(raw, "word " * 700, everything).samples
    assert (sample.program, sample.kept) == ("keep_all()", True)
    # A few stray symbols (jitter below min_remove_str_chars) are tolerated, up to the setting.
    raw, expert = "Home | News | Sports | Weather", "Home News Sports Weather"
    assert distill(raw, expert, everything).samples[0].kept
    strict = DistillConfig(keep_all_ratio=1.0, max_missed_chars_per_chunk=2)
    assert distill(raw, expert, strict).samples[0].drop_reason == "unexpressible"


def test_a_chunk_is_judged_unexpressible_on_its_own_deletions_only() -> None:
    # The expert joins two lines; the ops delete the same text from the other side of the break,
    # which is exact. A second chunk misses a deletion it cannot express: only it is dropped.
    cfg, chunking = DistillConfig(keep_all_ratio=1.0), ChunkingConfig(token_budget=64)
    fill = "This opening paragraph is plain text that the expert keeps exactly as it was written, word for word."
    joined = ("Then the council said Share NEWSDESKXYZ",
              "NEWSDESKXYZ junk Share rest of the report on the vote, which passed late on Tuesday evening.")
    pad = "Another plain paragraph in between, kept as it is by the expert, so that chunks split here."
    last = "Intro. Click here now! Results were read out. Click here now! The end of the evening session."
    expert_joined = ("Then the council said Share NEWSDESKXYZhare rest of the report on the vote, which passed "
                     "late on Tuesday evening.")
    raw = "\n".join([fill, *joined, pad, pad, last])
    expert = "\n".join([fill, expert_joined, pad, pad, last.replace("Click here now! ", "", 1)])
    reasons = [(s.start_line, s.end_line, s.drop_reason) for s in distill(raw, expert, cfg, chunking).samples]
    assert reasons == [(0, 1, None), (2, 3, None), (4, 5, "unexpressible")]


def test_a_lone_surrogate_in_the_text_is_distilled_like_any_char() -> None:
    assert distill_program("\ud800 abc\nShare this", "\ud800 abc") == "remove_lines(start=1, end=1)"
    assert distill_program("\ud800 abc", "\ud800 abc") == "keep_all()"  # a keep_all chunk, sampled or not


def test_keep_all_sampling_is_deterministic_and_follows_the_ratio() -> None:
    prompts = [f"[000] clean text number {i}" for i in range(2000)]
    first = [keep_all_sampled(7, p, 0.3) for p in prompts]
    assert first == [keep_all_sampled(7, p, 0.3) for p in prompts]
    assert 0.25 < sum(first) / len(first) < 0.35
    assert first != [keep_all_sampled(8, p, 0.3) for p in prompts]
    assert not any(keep_all_sampled(7, p, 0.0) for p in prompts)
    assert all(keep_all_sampled(7, p, 1.0) for p in prompts)
    # monotone in the ratio: raising it only adds samples
    assert all(keep_all_sampled(7, p, 0.6) for p, kept in zip(prompts, first) if kept)


def test_keep_all_chunks_are_sampled_and_op_chunks_always_kept() -> None:
    raw = "clean one\nclean two\nAD LINE HERE\nclean three"
    expert = "clean one\nclean two\nclean three"
    chunking = ChunkingConfig(token_budget=16)
    none = distill(raw, expert, DistillConfig(keep_all_ratio=0.0), chunking).samples
    assert [(s.n_ops > 0, s.kept, s.drop_reason) for s in none] == [
        (s.n_ops > 0, s.n_ops > 0, None if s.n_ops else "keep_all_sampled_out") for s in none
    ]
    assert any(s.n_ops for s in none) and any(not s.n_ops for s in none)
    all_ = distill(raw, expert, DistillConfig(keep_all_ratio=1.0), chunking).samples
    assert all(s.kept for s in all_)
    for seed in range(5):
        cfg = DistillConfig(keep_all_ratio=0.5, seed=seed)
        assert distill(raw, expert, cfg, chunking) == distill(raw, expert, cfg, chunking)


def test_drop_reasons_are_from_the_declared_set() -> None:
    assert set(DROP_REASONS) == {"illegal_edits", "deletes_everything", "too_many_ops", "unexpressible",
                                 "keep_all_sampled_out"}


def test_shingle_f1() -> None:
    assert shingle_f1("a b c d", "a b c d") == 1.0
    assert shingle_f1("", "") == 1.0 and shingle_f1("a", "") == 0.0
    assert shingle_f1("a b c d", "a b c x") == pytest.approx(0.5)  # 1 of 2 trigrams shared
    assert shingle_f1("a b", "a b c d e", 3) == pytest.approx(2 * 1 / (1 + 4))  # bigrams when short
    assert shingle_f1("a  b\nc", "a b c") == 1.0  # whitespace-insensitive


# --- property: deletion-only targets are reproduced exactly ----------------------------------

MIN = DistillConfig().min_remove_str_chars


@st.composite
def deletion_targets(draw: st.DrawFn, retype_spaces: bool = False) -> tuple[str, str]:
    """A raw document and a target made from it by dropping whole lines and deleting substrings
    (and, with `retype_spaces`, turning whitespace chars into other ones, line breaks included, as an
    expert that only deletes still does).

    Every non-space char occurs once in the document, so the target's non-space chars embed in
    the raw text one way only: the expected program is unambiguous up to which whitespace is
    kept, and whitespace is what the comparison collapses. (Repeated text, where remove_str may
    not be expressible, has its own unit tests.) Deleted substrings have at least MIN chars and
    a non-space char. Blank lines, runs of spaces and leading/trailing spaces all occur.
    """
    chars = draw(st.lists(st.sampled_from(string.ascii_letters + string.digits + "!#$%&()*+,-./:;<=>?@[]^_{|}~'\"\\"),
                          unique=True, max_size=70))
    seps = draw(st.lists(st.sampled_from(["", "", "", " ", " ", "  ", "\n", "\n\n", " \n", "\t", "\xa0", "\u3000"]),
                         min_size=len(chars), max_size=len(chars)))
    lines = "".join(c + sep for c, sep in zip(chars, seps)).split("\n")
    target: list[str] = []
    for line in lines:
        if line.strip() and draw(st.integers(0, 3)) == 0:
            continue  # drop the whole line
        for _ in range(draw(st.integers(0, 2))):
            if len(line) < MIN:
                break
            start = draw(st.integers(0, len(line) - MIN))
            stop = draw(st.integers(start + MIN, len(line)))
            if line[start:stop].strip():
                line = line[:start] + line[stop:]
        target.append(line)
    text = "\n".join(target)
    if retype_spaces:
        text = "".join(draw(st.sampled_from([c, " ", "\t", "\xa0", "\n"])) if c.isspace() else c for c in text)
    return "\n".join(lines), text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deletion_targets())
@example(("abcd efghijkl", "a hijkl"))  # the deleted run holds the only space the expert keeps there
@example(("a bc d e fgh", "a b gh"))  # two deletions around the space kept: neither too short
def test_property_deletion_only_targets_are_reproduced(case: tuple[str, str]) -> None:
    raw, target = case
    result = distill(raw, target)
    assert squash(run(raw, result.program)) == squash(target)
    assert result.stats.inserted_chars == result.stats.replaced_chars == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deletion_targets(retype_spaces=True))
@example(("a \nbc de", "a\n\nbe"))  # a line break for a deleted space tied with replacing a kept letter
def test_property_deletions_are_reproduced_when_the_expert_also_retypes_whitespace(case: tuple[str, str]) -> None:
    raw, target = case
    result = distill(raw, target)
    assert squash(run(raw, result.program)) == squash(target)
    assert result.stats.inserted_chars == result.stats.replaced_chars == 0


WORDS = ["Home", "News", "Share", "the", "vote", "passed", "|", "»", "Read more", "Click here!", "a", "é"]


@st.composite
def repetitive_deletions(draw: st.DrawFn) -> tuple[str, str, bool]:
    """A raw text of repeated words and lines (\\n, \\r\\n or \\r), and a target made by deleting
    any spans of it, however short, or (third value True) whole lines only."""
    line = st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join)
    lines = draw(st.lists(st.sampled_from(draw(st.lists(line, min_size=1, max_size=4))), min_size=1, max_size=10))
    raw = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    if draw(st.booleans()):
        return raw, "\n".join(ln for ln in lines if draw(st.booleans())), True
    keep = draw(st.lists(st.booleans(), min_size=len(raw), max_size=len(raw)))
    return raw, "".join(c for c, k in zip(raw, keep) if k or c in "\r\n"), False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(repetitive_deletions())
def test_property_deletion_only_targets_on_repetitive_text(case: tuple[str, str, bool]) -> None:
    """Any deletion-only target, on text where remove_str cannot express every deletion (repeats,
    deletions shorter than min_remove_str_chars). Line deletions are reproduced exactly. Otherwise
    repeated lines can anchor the alignment in the wrong copy; it then sees insertions (and the
    filters judge the document), but when it sees none the program deleted only what the expert
    deleted: the target, spaces aside, is still a subsequence of the output."""
    raw, target, whole_lines = case
    result = distill(raw, target)
    out = run(raw, result.program)
    legal = result.stats.inserted_chars == result.stats.replaced_chars == 0
    if whole_lines:
        assert legal and squash(out) == squash(target)
    elif legal:
        nospace = lambda t: "".join(t.split())  # noqa: E731
        it = iter(nospace(out))
        assert all(ch in it for ch in nospace(target))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab \n\r\t.[]'\"\\é", max_size=80), st.text(alphabet="ab \n.[]'\"\\", max_size=80))
def test_property_any_pair_gives_a_valid_deletion_program(raw: str, expert: str) -> None:
    result = distill(raw, expert, DistillConfig(keep_all_ratio=1.0), ChunkingConfig(token_budget=16))
    out = run(raw, result.program)  # every op valid on the whole document
    norm = "\n".join(split_lines(raw))
    it = iter(norm)
    assert all(ch in it for ch in out)  # a subsequence: only deletions
    assert result.stats.deleted_chars == len(norm) - len(out)
    per_chunk = execute(raw, [ChunkProgram(s.start_line, s.end_line, s.program) for s in result.samples])
    assert per_chunk.n_rejected == 0 and per_chunk.text == out
    assert 0.0 <= result.stats.fidelity <= 1.0
    assert result.stats.n_chunks == len(result.samples)
    assert all(s.drop_reason in (None, *DROP_REASONS) for s in result.samples)


# --- synthetic documents and the benchmark -----------------------------------------------------


def test_synth_docs_without_faults_distill_with_high_fidelity() -> None:
    synth = pytest.importorskip("refinex_spark.synth")
    docs = [d for d in synth.generate_corpus(40, seed=11) if not d.faults]
    assert len(docs) >= 10
    for doc in docs:
        hier = distill(doc.raw, doc.expert)
        assert hier.stats.fidelity >= 0.98, doc.doc_id
        assert hier.stats.kept, (doc.doc_id, hier.stats)


def test_bench_core_quick_prints_one_json_object() -> None:
    pytest.importorskip("refinex_spark.synth")
    proc = subprocess.run(
        [sys.executable, "-m", "refinex_spark.bench", "core", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    report = json.loads(proc.stdout)
    assert {"distill", "large_doc", "chunking", "apply_program", "token_economy", "targets", "pass"} <= set(report)
    assert set(report["distill"]["buckets"]) == {"2kB", "20kB", "200kB"}
    for bucket in report["distill"]["buckets"].values():
        assert {"docs", "hierarchical", "flat", "speedup", "fidelity_diff"} <= set(bucket)
        assert {"docs_per_s", "mb_per_s", "fidelity"} <= set(bucket["hierarchical"])
    assert set(report["pass"]) == set(report["targets"])
    assert all(isinstance(v, bool) for v in report["pass"].values())


def test_bench_dispatcher_rejects_unknown_suite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "refinex_spark.bench", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "core" in proc.stderr


def test_a_pure_deletion_embedding_that_glues_kept_words_is_not_taken() -> None:
    """On non-space characters alone the expert's "R a" also embeds as "Ra" (the 'a' of "Raby"): that
    alignment would delete the space the expert kept, so the run goes to the character aligner."""
    raw = "The storm Raby atix hit the coast today and stayed for hours."
    expert = "The storm R a hit the coast today and stayed for hours."
    result = distill(raw, expert)
    assert apply_program(raw, result.program) == expert and result.stats.fidelity == 1.0


def test_remove_str_texts_respect_the_runs_program_limits():
    raw = "Keep this sentence. SPONSORED: buy the deluxe blender today only! Keep this too."
    expert = "Keep this sentence.  Keep this too."
    default = distill(raw, expert)
    assert "remove_str" in default.program
    strict = distill(raw, expert, program=ProgramConfig(max_text_chars=10))
    assert "remove_str" not in strict.program  # refine would reject it as too_long: not training data
    assert strict.stats.fidelity < default.stats.fidelity


def test_every_line_of_a_long_page_losing_a_word_is_a_deletion_not_a_rewrite() -> None:
    """A forum page whose every comment line lost its "Reply": one run of unequal lines with tens
    of thousands of words a side, still aligned by words (once counted as replaced: dropped)."""
    lines = [" ".join(str(j % 10) for j in range(24)) + f" Reply{i}" for i in range(800)]
    result = distill("\n".join(lines), "\n".join(line.rsplit(" ", 1)[0] for line in lines))
    assert (result.stats.replaced_chars, result.stats.inserted_chars, result.stats.drop_reason) == (0, 0, None)
    assert result.stats.n_ops == 800 and result.program.count("remove_str(") == 800


def test_a_program_with_more_ops_than_lines_runs_whole() -> None:
    """Three ads in every line: 600 remove_str ops over 200 lines, within the whole-document caps."""
    raw = "\n".join(f"a{i} AD{i}xx b{i} AD{i}yy c{i} AD{i}zz d{i}" for i in range(200))
    expert = "\n".join(f"a{i} b{i} c{i} d{i}" for i in range(200))
    program = distill_program(raw, expert)
    assert program.count("remove_str(") == 600
    assert apply_program(raw, program).split() == expert.split()


def test_the_whole_document_program_removes_text_inside_a_line_the_chunks_show_truncated() -> None:
    raw, expert = "text " * 600 + "BUY NOW CHEAP PILLS end", "text " * 600 + "end"
    result = distill(raw, expert)
    assert result.program == "remove_str(line=0, text='BUY NOW CHEAP PILLS ')"
    assert [s.program for s in result.samples] == ["keep_all()"]  # the model sees the line cut: whole or nothing
    assert apply_program(raw, result.program) == expert
