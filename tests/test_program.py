"""Program language: parsing, rejection reasons, execution semantics, rendering, goldens, invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinex_spark.chunking import chunk_document, normalize_newlines, split_lines
from refinex_spark.config import ChunkingConfig, ProgramConfig
from refinex_spark.distill import distill_program
from refinex_spark.program import (
    CHUNK_FALLBACK,
    REJECT_REASONS,
    ChunkProgram,
    Op,
    OpOutcome,
    Program,
    Rejection,
    apply_program,
    execute,
    parse_program,
    render_op,
    render_program,
)

GOLDEN = Path(__file__).parent / "golden"
PROX = ProgramConfig(dialect="prox")
DOC = "l0 alpha\nl1 beta\nl2 gamma\nl3 delta"  # 4 lines
LINE_2_CUT = frozenset({2})  # DOC's line 2 shown truncated to the model


def is_subsequence(small: str, big: str) -> bool:
    chars = iter(big)
    return all(c in chars for c in small)


def only_rejection(program: str, dialect: str = "refinex", config: ProgramConfig | None = None) -> Rejection:
    parsed = parse_program(program, dialect, config)
    assert parsed.ops == ()
    assert len(parsed.rejected) == 1
    return parsed.rejected[0]


# --- parsing: every op of both dialects --------------------------------------------------------


def test_parse_refinex_ops_keyword_and_positional() -> None:
    program = "\n".join(
        [
            "keep_all()",
            "remove_lines(start=3, end=5)",
            "remove_lines(end=7, start=7)",
            "remove_lines(8, end=9)",
            "remove_str(line=2, text='Share')",
            'remove_str(4, "a \\"quoted\\" \\u00e9")',
        ]
    )
    parsed = parse_program(program)
    assert parsed.rejected == ()
    assert parsed.dialect == "refinex"
    assert parsed.ops == (
        Op("keep_all"),
        Op("remove_lines", start=3, end=5),
        Op("remove_lines", start=7, end=7),
        Op("remove_lines", start=8, end=9),
        Op("remove_str", line=2, text="Share"),
        Op("remove_str", line=4, text='a "quoted" é'),
    )


def test_parse_prox_ops_keyword_and_positional() -> None:
    program = "\n".join(
        [
            "remove_lines(line_start=0, line_end=2)",
            "remove_lines(4, 4)",
            "normalize(source_str='&amp;', target_str='&')",
            "normalize('x', target_str='')",
            "keep_doc()",
            "drop_doc()",
            "skip_chunk()",
        ]
    )
    parsed = parse_program(program, "prox")
    assert parsed.rejected == ()
    assert parsed.ops == (
        Op("remove_lines", start=0, end=2),
        Op("remove_lines", start=4, end=4),
        Op("normalize", text="&amp;", target="&"),
        Op("normalize", text="x", target=""),
        Op("keep_doc"),
        Op("drop_doc"),
        Op("skip_chunk"),
    )


def test_blank_lines_fences_indentation_comments_and_crlf_are_ignored() -> None:
    plain = parse_program("remove_lines(start=1, end=2)\nremove_str(line=0, text='x')")
    decorated = parse_program(
        "```python\r\n\r\n   remove_lines(start=1, end=2)  # menu\r\n"
        "\t\n\tremove_str(line=0, text='x')\r```\n"
    )
    assert decorated == plain
    assert plain.rejected == ()


def test_bounds_are_inclusive() -> None:
    cfg = ProgramConfig(max_line_number=10, max_text_chars=3, max_ops=2)
    parsed = parse_program("remove_lines(start=10, end=10)\nremove_str(line=0, text='abc')", config=cfg)
    assert parsed.rejected == ()
    assert parsed.ops == (Op("remove_lines", start=10, end=10), Op("remove_str", line=0, text="abc"))


# --- rejection reasons -------------------------------------------------------------------------

# (dialect, program line, expected reason, ProgramConfig overrides)
PARSE_REJECTIONS = [
    ("refinex", "remove_lines(start=1, end=", "malformed", {}),
    ("refinex", "42", "malformed", {}),
    ("refinex", "keep_all", "malformed", {}),
    ("refinex", "remove_lines(start=1, end=2); keep_all()", "malformed", {}),
    ("refinex", "x = remove_lines(0, 1)", "malformed", {}),
    ("refinex", "remove_lines(start=0,\x00 end=1)", "malformed", {}),
    ("refinex", "remove_str(line=0, text='\ud800')", "malformed", {}),  # raw surrogate: not encodable source
    ("refinex", "remove_str(line=0, text=" + "(" * 300 + "'a'" + ")" * 300 + ")", "malformed", {}),
    ("refinex", "-" * 30_000 + "1", "malformed", {}),  # parser runs out of stack, caught
    ("refinex", "a" + "[0]" * 10_000, "malformed", {}),  # RecursionError in ast construction, caught
    ("refinex", "remove_lines(start=" + "9" * 5000 + ", end=1)", "malformed", {}),  # int digit limit
    ("refinex", "delete_lines(start=1, end=2)", "unknown_function", {}),
    # Python NFKC-normalises identifiers: fullwidth names would otherwise pass the whitelist.
    ("refinex", "ｒｅｍｏｖｅ_ｌｉｎｅｓ(start=1, end=2)", "unknown_function", {}),
    ("prox", "ｄｒｏｐ_ｄｏｃ()", "unknown_function", {}),
    ("refinex", "os.system('rm -rf /')", "unknown_function", {}),
    ("refinex", "__import__('os').system('x')", "unknown_function", {}),
    ("refinex", "keep_all()()", "unknown_function", {}),
    ("refinex", "eval('1')", "unknown_function", {}),
    ("refinex", "normalize(source_str='a', target_str='b')", "not_in_dialect", {}),
    ("refinex", "drop_doc()", "not_in_dialect", {}),
    ("refinex", "keep_doc()", "not_in_dialect", {}),
    ("refinex", "skip_chunk()", "not_in_dialect", {}),
    ("prox", "remove_str(line=1, text='a')", "not_in_dialect", {}),
    ("prox", "keep_all()", "not_in_dialect", {}),
    ("refinex", "remove_lines(start=-1, end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(start=True, end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(start=1.0, end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(start='1', end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(start=1+1, end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(start=1, end=2, extra=3)", "bad_argument", {}),
    ("refinex", "remove_lines(start=1, start=2)", "bad_argument", {}),
    ("refinex", "remove_lines(1, start=2)", "bad_argument", {}),
    ("refinex", "remove_lines(start=1)", "bad_argument", {}),
    ("refinex", "remove_lines(1, 2, 3)", "bad_argument", {}),
    ("refinex", "remove_lines(*rows)", "bad_argument", {}),
    ("refinex", "remove_lines(**rows)", "bad_argument", {}),
    ("refinex", "remove_lines(start=5, end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(line_start=1, line_end=2)", "bad_argument", {}),
    ("refinex", "remove_lines(ｓｔａｒｔ=1, end=2)", "bad_argument", {}),
    ("refinex", "remove_str(text='x', ｌｉｎｅ=1)", "bad_argument", {}),
    ("prox", "normalize(source_str='a', ｔａｒｇｅｔ_ｓｔｒ='b')", "bad_argument", {}),
    ("refinex", "keep_all(1)", "bad_argument", {}),
    ("refinex", "remove_str(line=1, text=b'x')", "bad_argument", {}),
    ("refinex", "remove_str(line=1, text=f'{x}')", "bad_argument", {}),
    ("refinex", "remove_str(line=1, text=name)", "bad_argument", {}),
    ("refinex", "remove_str(line=1, text='\\ud800')", "bad_argument", {}),  # escaped lone surrogate
    ("prox", "remove_lines(start=1, end=2)", "bad_argument", {}),
    ("prox", "normalize(source_str='a')", "bad_argument", {}),
    ("refinex", "remove_lines(start=0, end=10000001)", "out_of_range", {}),
    ("refinex", "remove_str(line=99999999999999999999, text='a')", "out_of_range", {}),
    ("refinex", "remove_lines(start=11, end=11)", "out_of_range", {"max_line_number": 10}),
    ("prox", "remove_lines(line_start=0, line_end=11)", "out_of_range", {"max_line_number": 10}),
    ("refinex", "remove_str(line=1, text='')", "empty_text", {}),
    ("refinex", "remove_str(line=1, text='' '')", "empty_text", {}),
    ("prox", "normalize(source_str='', target_str='x')", "empty_text", {}),
    ("refinex", "remove_str(line=1, text='abcdef')", "too_long", {"max_text_chars": 5}),
    ("prox", "normalize(source_str='a', target_str='abcdef')", "too_long", {"max_text_chars": 5}),
    ("prox", "normalize(source_str='a', target_str='x\\ny')", "bad_argument", {}),  # ops edit inside a line
    ("prox", "normalize(source_str='a', target_str='x\\ry')", "bad_argument", {}),
    # Checked before ast.parse: deep nesting that would be 'malformed' if it reached the parser.
    ("refinex", "(" * 100_000, "too_long", {}),
    ("refinex", "remove_str(line=1, text='" + "a" * 2_000 + "')", "too_long", {"max_text_chars": 20}),
]


@pytest.mark.parametrize(("dialect", "line", "reason", "overrides"), PARSE_REJECTIONS)
def test_parse_rejection_reason(dialect: str, line: str, reason: str, overrides: dict) -> None:
    rejection = only_rejection(line, dialect, ProgramConfig(**overrides))
    assert (rejection.reason, rejection.source) == (reason, line.strip()[:200])
    assert rejection.detail


def test_a_normalize_target_with_a_line_break_cannot_shift_the_ops_after_it() -> None:
    """A line break written into a line would move every later line's number: rejected, and the
    next op still finds its line."""
    result = execute("a b", "normalize(source_str='a', target_str='x\\ny')\nnormalize(source_str='b', target_str='z')",
                     ProgramConfig(dialect="prox"))
    assert result.text == "a z"
    assert [o.reason for o in result.outcomes if not o.applied] == ["bad_argument"]


def test_pre_parse_length_check_happens_before_ast() -> None:
    rejection = only_rejection("(" * 100_000)
    assert "line has 100000 chars" in rejection.detail


def test_whole_program_over_max_program_chars_is_one_rejection() -> None:
    program = "keep_all()\n" * 20
    rejection = only_rejection(program, config=ProgramConfig(max_program_chars=len(program) - 1))
    assert rejection.reason == "too_long"
    assert rejection.source == program[:200]


def test_ops_beyond_max_ops_are_rejected_without_parsing() -> None:
    program = "keep_all()\nfoo(\nremove_lines(0, 0)\nremove_lines(1, 1)\n(("
    parsed = parse_program(program, config=ProgramConfig(max_ops=2))
    assert parsed.ops == (Op("keep_all"), Op("remove_lines", start=0, end=0))
    assert [r.reason for r in parsed.rejected] == ["malformed", "too_many_ops", "too_many_ops"]


def test_ops_whose_canonical_form_would_overflow_the_program_are_too_long() -> None:
    # Invisible chars are written raw but rendered escaped ("\U000e0001", 10 chars each): the
    # canonical program must still fit max_program_chars, or it would not parse back.
    text = "\U000e0001" * 1900
    program = "\n".join(f"remove_str(line={i}, text='{text}')" for i in range(50))
    assert len(program) <= ProgramConfig().max_program_chars
    parsed = parse_program(program)
    assert (len(parsed.ops), {r.reason for r in parsed.rejected}) == (5, {"too_long"})
    canonical = render_program(parsed)
    assert len(canonical) <= ProgramConfig().max_program_chars
    assert parse_program(canonical) == Program(parsed.ops, (), "refinex")


# (config, raw text, chunk program, expected reason); one rejection stays under the fallback threshold
EXECUTE_REJECTIONS = [
    (None, DOC, ChunkProgram(0, 3, "remove_lines(start=3, end=4)"), "out_of_range"),
    (None, DOC, ChunkProgram(0, 3, "remove_str(line=4, text='l')"), "out_of_range"),
    (PROX, DOC, ChunkProgram(0, 3, "remove_lines(line_start=4, line_end=4)"), "out_of_range"),
    (None, DOC, ChunkProgram(1, 2, "remove_lines(start=0, end=1)"), "outside_chunk"),
    (None, DOC, ChunkProgram(1, 2, "remove_lines(start=2, end=3)"), "outside_chunk"),
    (None, DOC, ChunkProgram(1, 2, "remove_str(line=3, text='l3')"), "outside_chunk"),
    (None, DOC, ChunkProgram(0, 3, "remove_str(line=1, text='gamma')"), "text_not_in_line"),
    (None, DOC, ChunkProgram(0, 3, "remove_str(line=1, text='beta\\n')"), "text_not_in_line"),
    (PROX, DOC, ChunkProgram(1, 2, "normalize(source_str='delta', target_str='d')"), "text_not_in_line"),
    (None, DOC, ChunkProgram(0, 3, "remove_str(line=2, text='l2')", LINE_2_CUT), "truncated_line"),
    # the only line holding "2" is truncated, so normalize finds nothing it may touch
    (PROX, DOC, ChunkProgram(0, 3, "normalize(source_str='2', target_str='')", LINE_2_CUT), "text_not_in_line"),
]


@pytest.mark.parametrize(("config", "raw", "chunk", "reason"), EXECUTE_REJECTIONS)
def test_execute_rejection_reason(
    config: ProgramConfig | None, raw: str, chunk: ChunkProgram, reason: str
) -> None:
    result = execute(raw, [chunk], config)
    assert result.outcomes == (OpOutcome(chunk.program, applied=False, reason=reason),)
    assert (result.text, result.status, result.n_rejected, result.n_applied) == (raw, "fallback", 1, 0)


def test_every_reject_reason_is_tested() -> None:
    tested = {case[2] for case in PARSE_REJECTIONS} | {case[3] for case in EXECUTE_REJECTIONS}
    tested.add("too_many_ops")  # test_ops_beyond_max_ops_are_rejected_without_parsing
    assert tested == set(REJECT_REASONS)


@pytest.mark.parametrize(
    "hostile", [None, 42, 3.5, b"keep_all()", ["keep_all()"], object(), "\x00" * 10, "\ud800\udfff" * 50]
)
@pytest.mark.parametrize("dialect", ["refinex", "prox"])
def test_hostile_programs_never_raise(hostile: object, dialect: str) -> None:
    parsed = parse_program(hostile, dialect)
    assert parsed.ops == ()
    assert [r.reason for r in parsed.rejected] == ["malformed"]
    if not isinstance(hostile, list):  # a list is read as chunk programs
        assert execute(DOC, hostile, ProgramConfig(dialect=dialect)).text == DOC  # type: ignore[arg-type]


@pytest.mark.parametrize("programs", [["keep_all()"], (ChunkProgram(0, 3, "keep_all()"), None)])
def test_chunk_programs_of_the_wrong_type_are_a_caller_error(programs: object) -> None:
    with pytest.raises(TypeError, match="ChunkProgram"):
        execute(DOC, programs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ChunkProgram"):
        apply_program(DOC, programs)  # type: ignore[arg-type]


def test_unknown_dialect_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="dialect"):
        parse_program("keep_all()", "sql")
    with pytest.raises(ValueError, match="dialect"):
        render_program([], "sql")


# --- execution ---------------------------------------------------------------------------------


def test_remove_lines_deletes_lines_with_their_newline() -> None:
    assert apply_program("a\nb\nc\n", "remove_lines(start=1, end=1)") == "a\nc\n"
    assert apply_program("a\nb\nc\n", "remove_lines(start=3, end=3)") == "a\nb\nc"
    assert apply_program("a\nb\nc\n", "remove_lines(start=0, end=3)") == ""
    assert apply_program("a\nb\nc\nd", "remove_lines(start=0, end=1)\nremove_lines(start=1, end=2)") == "d"


def test_remove_str_deletes_every_occurrence_and_keeps_the_line() -> None:
    assert apply_program("x ab y ab\nab", "remove_str(line=0, text='ab')") == "x  y \nab"
    assert apply_program("ab\nz", "remove_str(line=0, text='ab')") == "\nz"


def test_remove_str_is_checked_against_current_content() -> None:
    result = execute(
        "abcabc\nz",
        "remove_str(line=0, text='b')\nremove_str(line=0, text='ca')\nremove_str(line=0, text='abc')",
        ProgramConfig(max_rejected_per_chunk=2),
    )
    assert result.text == "ac\nz"
    assert [o.reason for o in result.outcomes] == ["", "", "text_not_in_line"]


def test_remove_str_on_a_removed_line_is_valid() -> None:
    result = execute("a\nbb\nc", "remove_lines(start=1, end=1)\nremove_str(line=1, text='b')")
    assert (result.text, result.n_applied, result.n_rejected) == ("a\nc", 2, 0)


def test_lines_are_counted_after_newline_normalisation() -> None:
    result = execute("a\r\nb\rc\n\r\nd", "remove_lines(start=1, end=1)\nremove_str(line=3, text='\\r')")
    assert result.text == "a\nc\n\nd"
    assert [o.reason for o in result.outcomes] == ["", "text_not_in_line"]
    assert result.deleted_chars == len("a\nb\nc\n\nd") - len("a\nc\n\nd")


def test_empty_document_is_one_empty_line() -> None:
    assert execute("", "keep_all()").status == "kept"
    assert execute("", "remove_lines(start=0, end=0)").text == ""
    assert execute("", "remove_lines(start=1, end=1)").outcomes[0].reason == "out_of_range"


def test_chunk_with_too_many_rejections_falls_back() -> None:
    program = "remove_lines(start=0, end=0)\nfoo()\nremove_str(line=1, text='zz')"
    result = execute(DOC, program)
    assert (result.text, result.status, result.fallback_chunks) == (DOC, "fallback", (0,))
    assert result.outcomes == (
        OpOutcome("remove_lines(start=0, end=0)", False, CHUNK_FALLBACK),
        OpOutcome("foo()", False, "unknown_function"),
        OpOutcome("remove_str(line=1, text='zz')", False, "text_not_in_line"),
    )
    assert (result.n_applied, result.n_rejected, result.deleted_chars) == (0, 2, 0)


@pytest.mark.parametrize(("threshold", "falls_back"), [(1, True), (2, False), (3, False)])
def test_fallback_threshold_is_configurable(threshold: int, falls_back: bool) -> None:
    config = ProgramConfig(max_rejected_per_chunk=threshold)
    result = execute(DOC, "remove_lines(start=0, end=0)\nfoo()", config)
    assert result.text == (DOC if falls_back else DOC.split("\n", 1)[1])
    assert result.status == ("fallback" if falls_back else "ok")
    assert result.fallback_chunks == ((0,) if falls_back else ())


@pytest.mark.parametrize(
    ("program", "reason"), [("foo()", "unknown_function"), ("Sure, here is the program:", "malformed"),
                            ("keep_all()\n" * 10_000, "too_long")]
)
def test_a_program_with_only_rejections_falls_back(program: str, reason: str) -> None:
    result = execute(DOC, [ChunkProgram(0, 3, program)])  # one chunk: no whole-document allowance
    assert (result.text, result.status, result.fallback_chunks) == (DOC, "fallback", ())
    assert (result.n_applied, [o.reason for o in result.outcomes]) == (0, [reason])


def test_a_valid_no_op_beside_a_rejection_is_a_fallback() -> None:
    """`kept` means the program kept the text and nothing in it was rejected: an audit of fallbacks
    must find a keep_all() written beside a bad line."""
    result = execute(DOC, "keep_all()\nfoo()")
    assert (result.status, result.n_applied, result.n_rejected) == ("fallback", 1, 1)
    assert execute(DOC, "keep_all()\nremove_lines(start=99, end=99)").status == "fallback"


@pytest.mark.parametrize("program", ["", "keep_all()", "```\n```", "keep_all()\nkeep_all()"])
def test_no_op_programs_are_kept(program: str) -> None:
    result = execute("a\r\nb", program)
    assert (result.text, result.status, result.deleted_chars) == ("a\nb", "kept", 0)


def test_chunks_fall_back_independently_and_outcomes_keep_program_order() -> None:
    chunks = [
        ChunkProgram(0, 1, "remove_str(line=0, text='alpha')\nbad(\nremove_lines(start=1, end=1)"),
        ChunkProgram(2, 3, "remove_lines(start=2, end=2)\nremove_lines(start=0, end=0)\nnope()"),
    ]
    result = execute(DOC, chunks)
    assert result.text == "l0 \nl2 gamma\nl3 delta"
    assert (result.status, result.fallback_chunks) == ("ok", (1,))
    # Each outcome names its chunk: an outside_chunk rejection is traced to the chunk that wrote it.
    assert [(o.op, o.applied, o.reason, o.chunk) for o in result.outcomes] == [
        ("remove_str(line=0, text='alpha')", True, "", 0),
        ("bad(", False, "malformed", 0),
        ("remove_lines(start=1, end=1)", True, "", 0),
        ("remove_lines(start=2, end=2)", False, CHUNK_FALLBACK, 1),
        ("remove_lines(start=0, end=0)", False, "outside_chunk", 1),
        ("nope()", False, "unknown_function", 1),
    ]
    assert (result.n_applied, result.n_rejected) == (2, 3)
    assert result.deleted_chars == len(DOC) - len(result.text)


def test_later_chunks_see_earlier_chunks_edits() -> None:
    chunks = [ChunkProgram(0, 3, "remove_str(1, 'beta')"), ChunkProgram(0, 3, "remove_str(1, 'be')")]
    result = execute(DOC, chunks)
    assert result.text == DOC.replace("beta", "")
    assert [o.reason for o in result.outcomes] == ["", "text_not_in_line"]


def test_all_chunks_falling_back_gives_status_fallback() -> None:
    chunks = [ChunkProgram(0, 1, "x(\ny("), ChunkProgram(2, 3, "remove_lines(start=2, end=2)\nz(\nw(")]
    result = execute(DOC, chunks)
    assert (result.text, result.status, result.fallback_chunks) == (DOC, "fallback", (0, 1))
    assert result.n_applied == 0


def test_prox_normalize_replaces_within_the_chunk_and_may_insert() -> None:
    raw = "a&amp;b\nc&amp;d\ne&amp;f\ng&amp;h"
    chunks = [ChunkProgram(0, 1, ""), ChunkProgram(2, 3, "normalize('&amp;', ' and also ')")]
    result = execute(raw, chunks, PROX)
    assert result.text == "a&amp;b\nc&amp;d\ne and also f\ng and also h"
    assert result.status == "ok"
    assert result.deleted_chars == -10


def test_prox_normalize_leaves_truncated_lines_alone() -> None:
    chunk = ChunkProgram(0, 3, "normalize(source_str='l', target_str='L')", frozenset({1}))
    assert execute(DOC, [chunk], PROX).text == "L0 aLpha\nl1 beta\nL2 gamma\nL3 deLta"


def test_prox_remove_lines_and_no_ops() -> None:
    result = execute(DOC, "remove_lines(line_start=1, line_end=2)\nkeep_doc()\nskip_chunk()", PROX)
    assert (result.text, result.status, result.n_applied) == ("l0 alpha\nl3 delta", "ok", 3)


def test_prox_drop_doc_drops_the_document() -> None:
    result = execute("a\r\nb", "drop_doc()", PROX)
    assert (result.text, result.status, result.deleted_chars) == ("", "dropped", 3)


def test_prox_drop_doc_in_a_fallback_chunk_is_not_applied() -> None:
    result = execute(DOC, [ChunkProgram(0, 3, "drop_doc()\nx(\ny(")], PROX)
    assert (result.text, result.status) == (DOC, "fallback")
    assert result.outcomes[0] == OpOutcome("drop_doc()", False, CHUNK_FALLBACK)


def test_apply_program_is_execute_text() -> None:
    program = "remove_lines(start=0, end=0)\nremove_str(line=2, text='gam')"
    assert apply_program(DOC, program) == execute(DOC, program).text == "l1 beta\nl2 ma\nl3 delta"


def test_apply_program_on_a_large_document() -> None:
    # 4 MB, 52k lines, a few ops (speed is measured by `python -m refinex_spark.bench core`).
    line = "Some ordinary line of a web page, with words and punctuation; eighty chars."
    doc = (line + "\n") * 52_000
    program = "remove_lines(5, 900)\nremove_str(line=1000, text='words')\nremove_lines(40000, 40000)"
    expected = [line] * 52_001
    expected[-1] = ""
    expected[1000] = line.replace("words", "")
    del expected[40000]
    del expected[5:901]
    assert apply_program(doc, program) == "\n".join(expected)


# Small caps stand in for the defaults (100 kB, 512 ops), which a 1 MB document's program exceeds.
SMALL_CAPS = ProgramConfig(max_program_chars=2_000, max_ops=50)


def test_a_whole_document_program_may_be_about_as_long_as_its_document() -> None:
    lines = [f"line {i} of the page" for i in range(300)]
    raw, expert = "\n".join(lines), "\n".join(lines[::2])  # 6189 chars: caps scale by 4
    program = distill_program(raw, expert)
    assert (len(program.splitlines()), len(program)) == (150, 4839)  # over both plain caps
    result = execute(raw, program, SMALL_CAPS)
    assert (result.text, result.status, result.n_applied, result.n_rejected) == (expert, "ok", 150, 0)
    assert apply_program(raw, program, SMALL_CAPS) == expert
    # Chunk programs and parse_program keep the plain caps.
    assert execute(raw, [ChunkProgram(0, 299, program)], SMALL_CAPS).status == "fallback"
    assert [r.reason for r in parse_program(program, config=SMALL_CAPS).rejected] == ["too_long"]


def test_a_short_document_with_many_deleted_lines_gets_ops_per_line() -> None:
    lines = [f"{'keep' if i % 2 == 0 else 'menu'} {i}" for i in range(300)]  # 2189 chars: no char scaling
    raw, expert = "\n".join(lines), "\n".join(lines[::2])
    program = distill_program(raw, expert)
    assert len(program.splitlines()) == 150  # three times the plain max_ops
    assert execute(raw, program, SMALL_CAPS).n_applied == 150
    assert apply_program(raw, program, SMALL_CAPS) == expert


def test_a_whole_document_program_past_its_scaled_caps_is_still_rejected() -> None:
    raw = "x" * 6189  # what a deletion program may need: 1 + 6189 ops, 64 + 44 * 6189 = 272,380 chars
    assert execute(raw, "keep_all()\n" * 24_800, SMALL_CAPS).outcomes[0].reason == "too_long"  # 272,800 chars
    reasons = [o.reason for o in execute(raw, "keep_all()\n" * 6191, SMALL_CAPS).outcomes]
    assert reasons == [""] * 6190 + ["too_many_ops"]
    # A hostile program for a short document gets the plain caps.
    huge = "remove_lines(start=0, end=0)\n" * 4_000
    assert [o.reason for o in execute(DOC, huge).outcomes] == ["too_long"]
    assert execute(DOC, huge).text == DOC


# --- rendering ---------------------------------------------------------------------------------


def test_render_op_in_both_dialects() -> None:
    assert render_op(Op("remove_lines", start=1, end=2)) == "remove_lines(start=1, end=2)"
    assert render_op(Op("remove_lines", start=1, end=2), "prox") == "remove_lines(line_start=1, line_end=2)"
    quotes = Op("remove_str", line=0, text="it's \"x\"\n")
    assert render_op(quotes) == "remove_str(line=0, text='it\\'s \"x\"\\n')"
    curly = Op("normalize", text="\u2019", target="")
    assert render_op(curly, "prox") == "normalize(source_str='\u2019', target_str='')"
    assert render_op(Op("keep_all")) == "keep_all()"
    with pytest.raises(ValueError, match="not an op"):
        render_op(Op("normalize", text="a", target="b"))


def test_render_program_of_no_ops_is_the_dialect_no_op() -> None:
    assert render_program(()) == "keep_all()"
    assert render_program(parse_program("junk(")) == "keep_all()"
    assert render_program(parse_program("junk(", "prox")) == "skip_chunk()"


def test_render_program_defaults_to_the_programs_dialect() -> None:
    parsed = parse_program("remove_lines(0, 1)\ndrop_doc()", "prox")
    assert render_program(parsed) == "remove_lines(line_start=0, line_end=1)\ndrop_doc()"
    assert render_program(parsed.ops[:1]) == "remove_lines(start=0, end=1)"


def test_worst_case_escaped_strings_still_round_trip() -> None:
    # repr() of chr(0x10FFFF) is 10 chars ("\U0010ffff"): the longest canonical line must still parse.
    text = chr(0x10FFFF) * ProgramConfig().max_text_chars
    for op, dialect in [
        (Op("remove_str", line=7, text=text), "refinex"),
        (Op("normalize", text=text, target=text), "prox"),
    ]:
        assert parse_program(render_op(op, dialect), dialect).ops == (op,)


# --- golden files ------------------------------------------------------------------------------


def read_golden(name: str) -> str:
    return (GOLDEN / name).read_bytes().decode("utf-8")  # exact bytes: no newline translation


@pytest.mark.parametrize("dialect", ["refinex", "prox"])
def test_golden_program(dialect: str) -> None:
    program = read_golden(f"program_{dialect}.txt")
    config = ProgramConfig(dialect=dialect)
    canonical = render_program(parse_program(program, dialect))
    assert canonical + "\n" == read_golden(f"program_{dialect}.canonical.txt")

    raw = read_golden(f"program_{dialect}.raw.txt")
    result = execute(raw, program, config)
    assert result.text == read_golden(f"program_{dialect}.expected.txt")
    shown = "".join(f"{o.reason or 'applied'}\t{o.op}\n" for o in result.outcomes)
    assert shown == read_golden(f"program_{dialect}.outcomes.txt")
    # The canonical program is the same program minus the rejected lines.
    assert execute(raw, canonical, config).text == result.text


# --- properties --------------------------------------------------------------------------------

line_chars = st.one_of(st.sampled_from("\t abé'\"\\"), st.characters(exclude_characters="\r\n"))
line_texts = st.text(line_chars, max_size=40)


@st.composite
def documents(draw: st.DrawFn, one_line: st.SearchStrategy[str] = line_texts) -> str:
    r"""Several lines separated by any mix of "\n", "\r\n" and "\r"."""
    lines = draw(st.lists(one_line, max_size=12))
    breaks = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines), max_size=len(lines)))
    return "".join(line + br for line, br in zip(lines, breaks)) + draw(one_line)


raw_texts = st.one_of(documents(), st.text(st.one_of(st.sampled_from("\r\n"), st.characters()), max_size=100))
short_texts = st.text(st.one_of(st.sampled_from("'\"\\\n\r"), st.characters()), max_size=12)
quoted = st.one_of(short_texts.map(repr), short_texts.map(json.dumps), short_texts.map(lambda s: f"'{s}'"))


@st.composite
def program_texts(draw: st.DrawFn, lines: list[str], dialect: str = "refinex") -> str:
    """Programs mixing ops valid for `dialect` on this document (about 2 lines in 3) with hostile lines."""
    n = len(lines)
    index = st.integers(0, n - 1)

    @st.composite
    def substring(draw: st.DrawFn) -> tuple[int, str]:  # a real substring of a line, empty if the line is
        i = draw(index)
        a = draw(st.integers(0, max(len(lines[i]) - 1, 0)))
        return i, lines[i][a : draw(st.integers(a + 1, max(len(lines[i]), a + 1)))]

    @st.composite
    def span(draw: st.DrawFn) -> tuple[int, int]:
        a = draw(index)
        return a, draw(st.integers(a, n - 1))

    if dialect == "refinex":
        valid = st.one_of(
            substring().map(lambda s: f"remove_str(line={s[0]}, text={s[1]!r})"),
            span().map(lambda s: f"remove_lines(start={s[0]}, end={s[1]})"),
            span().map(lambda s: f"remove_lines({s[0]}, {s[1]})"),
            st.just("keep_all()"),
        )
    else:
        valid = st.one_of(
            st.builds(lambda s, t: f"normalize(source_str={s[1]!r}, target_str={t})", substring(), quoted),
            span().map(lambda s: f"remove_lines(line_start={s[0]}, line_end={s[1]})"),
            st.sampled_from(["keep_doc()", "skip_chunk()", "drop_doc()"]),
        )
    line_no = st.integers(-2, n + 2).map(str)
    hostile = st.one_of(
        st.builds("remove_lines(start={}, end={})".format, line_no, line_no),
        st.builds("remove_lines(line_start={}, line_end={})".format, line_no, line_no),
        st.builds("remove_str(line={}, text={})".format, line_no, quoted),
        st.builds("normalize(source_str={}, target_str={})".format, quoted, quoted),
        st.sampled_from(["keep_all()", "drop_doc()", "```python", "", "  ", "remove_lines(", "foo()"]),
        st.sampled_from(["remove_lines(start=True, end=1)", "os.system('x')", "(" * 300, "-" * 20_000 + "1"]),
        short_texts,
    )
    # Half the programs are clean, so that executed (not fallen-back) programs are common too.
    op_lines = draw(st.lists(draw(st.sampled_from([valid, st.one_of(valid, hostile)])), max_size=8))
    return draw(st.sampled_from(["\n", "\r\n"])).join(op_lines)


def any_program(lines: list[str], dialect: str = "refinex") -> st.SearchStrategy[str]:
    return st.one_of(program_texts(lines, dialect), program_texts(lines, dialect), st.text(max_size=200))


@settings(max_examples=200, deadline=None)
@given(raw=raw_texts, data=st.data())
def test_refinex_output_is_a_subsequence_of_the_input(raw: str, data: st.DataObject) -> None:
    norm = normalize_newlines(raw)
    program = data.draw(any_program(split_lines(raw)))
    result = execute(raw, program)
    assert is_subsequence(result.text, norm)
    assert result.text == apply_program(raw, program)
    # Bookkeeping agrees with the text and the parse.
    parsed = parse_program(program)
    assert len(result.outcomes) == len(parsed.ops) + len(parsed.rejected)
    assert result.n_applied == sum(o.applied for o in result.outcomes)
    assert result.deleted_chars == len(norm) - len(result.text) >= 0
    changed = result.text != norm
    assert result.status == ("ok" if changed else "fallback" if result.fallback_chunks or result.n_rejected else "kept")


@settings(max_examples=200, deadline=None)
@given(raw=raw_texts, data=st.data())
def test_chunked_refinex_output_is_a_subsequence_of_the_input(raw: str, data: st.DataObject) -> None:
    # Tiny budget: many chunks, and long lines shown truncated.
    chunks = chunk_document(raw, ChunkingConfig(token_budget=16))
    lines = split_lines(raw)
    programs = [ChunkProgram(c.start, c.end, data.draw(any_program(lines)), c.truncated) for c in chunks]
    result = execute(raw, programs)
    assert is_subsequence(result.text, normalize_newlines(raw))
    assert set(result.fallback_chunks) <= set(range(len(chunks)))


@settings(max_examples=100, deadline=None)
@given(raw=raw_texts, data=st.data())
def test_prox_execution_never_raises(raw: str, data: st.DataObject) -> None:
    result = execute(raw, data.draw(any_program(split_lines(raw), "prox")), PROX)
    assert result.status in ("ok", "kept", "fallback", "dropped")
    assert (result.text == "") or result.status != "dropped"
    assert len(result.text) <= len(normalize_newlines(raw)) + PROX.max_text_chars  # normalize's growth cap


def _normalized_by_hand(lines: list[str], ops: list[tuple[str, str]], truncated: set[int], cap: int) -> str:
    """Reference for a chunk of normalize ops: line by line, as ProX describes them."""
    lines, grown = list(lines), 0
    for source, target in ops:
        hits = [i for i, line in enumerate(lines) if i not in truncated and source in line]
        growth = (len(target) - len(source)) * sum(lines[i].count(source) for i in hits)
        if hits and grown + growth <= cap:
            grown += growth
            for i in hits:
                lines[i] = lines[i].replace(source, target)
    return "\n".join(lines)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.text("ab \n", max_size=8).map(lambda t: t.replace("\n", "")), min_size=1, max_size=8),
       ops=st.lists(st.tuples(st.text("ab", min_size=1, max_size=3), st.text("ab", max_size=6)), max_size=6),
       truncated=st.sets(st.integers(0, 7), max_size=2))
def test_prox_normalize_matches_a_line_by_line_reference(lines, ops, truncated) -> None:
    cfg = ProgramConfig(dialect="prox", max_text_chars=6, max_rejected_per_chunk=100)
    program = "\n".join(f"normalize(source_str={a!r}, target_str={b!r})" for a, b in ops)
    result = execute("\n".join(lines), [ChunkProgram(0, len(lines) - 1, program, frozenset(truncated))], cfg)
    assert result.text == _normalized_by_hand(lines, ops, truncated, cfg.max_text_chars)


def test_prox_normalize_cannot_blow_a_document_up() -> None:
    # 'a' doubled forty times would be 2**40 chars: past the cap the ops are too_long, and with
    # that many rejections the chunk keeps its text.
    result = execute("a", "normalize(source_str='a', target_str='aa')\n" * 40, PROX)
    assert (result.text, result.status) == ("a", "fallback")
    assert [o.reason for o in result.outcomes].count("too_long") == 40 - 10  # 2**11 > 1 + 2000
    lenient = PROX.model_copy(update={"max_rejected_per_chunk": 100})
    assert len(execute("a", "normalize(source_str='a', target_str='aa')\n" * 40, lenient).text) == 2**10


hostile_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from("(')\x00"))
hostile_inputs = st.one_of(
    st.text(hostile_chars, max_size=200),
    st.binary(max_size=50),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    raw_texts.flatmap(lambda raw: program_texts(split_lines(raw), "refinex")),
    raw_texts.flatmap(lambda raw: program_texts(split_lines(raw), "prox")),
)


@settings(max_examples=200, deadline=None)
@given(program=hostile_inputs, dialect=st.sampled_from(["refinex", "prox"]))
def test_parse_program_never_raises(program: object, dialect: str) -> None:
    parsed = parse_program(program, dialect)
    assert isinstance(parsed, Program)
    assert all(isinstance(op, Op) for op in parsed.ops)
    assert all(r.reason in REJECT_REASONS and len(r.source) <= 200 for r in parsed.rejected)


@settings(max_examples=200, deadline=None)
@given(raw=raw_texts, dialect=st.sampled_from(["refinex", "prox"]), data=st.data())
def test_render_is_idempotent(raw: str, dialect: str, data: st.DataObject) -> None:
    # Tight program caps too (the dialects' no-ops are 12 chars at most), where escaping overflows.
    config = ProgramConfig(max_program_chars=data.draw(st.sampled_from([100_000, 12, 40, 100, 300])))
    program = data.draw(any_program(split_lines(raw), dialect))
    parsed = parse_program(program, dialect, config)
    canonical = render_program(parsed)
    reparsed = parse_program(canonical, dialect, config)
    assert reparsed.rejected == ()
    assert reparsed.ops == parsed.ops or not parsed.ops  # no ops render as the dialect's no-op
    assert render_program(reparsed) == canonical


line_numbers = st.integers(0, ProgramConfig().max_line_number)
op_texts = st.text(min_size=1, max_size=40)


@st.composite
def line_range(draw: st.DrawFn) -> tuple[int, int]:
    a, b = draw(line_numbers), draw(line_numbers)
    return min(a, b), max(a, b)


valid_ops = {
    "refinex": st.one_of(
        st.just(Op("keep_all")),
        line_range().map(lambda r: Op("remove_lines", start=r[0], end=r[1])),
        st.builds(lambda i, t: Op("remove_str", line=i, text=t), line_numbers, op_texts),
    ),
    "prox": st.one_of(
        st.sampled_from([Op("keep_doc"), Op("drop_doc"), Op("skip_chunk")]),
        line_range().map(lambda r: Op("remove_lines", start=r[0], end=r[1])),
        st.builds(lambda s, t: Op("normalize", text=s, target=t), op_texts,
                   # a target stays in its line, and is storable text (no lone surrogate), as op_texts are
                   st.text(st.characters(exclude_characters="\n\r", exclude_categories=("Cs",)), max_size=40)),
    ),
}


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dialect=st.sampled_from(["refinex", "prox"]))
def test_parse_inverts_render_for_valid_ops(data: st.DataObject, dialect: str) -> None:
    ops = data.draw(st.lists(valid_ops[dialect], min_size=1, max_size=10))
    parsed = parse_program(render_program(ops, dialect), dialect)
    assert parsed.rejected == ()
    assert parsed.ops == tuple(ops)


@settings(max_examples=200, deadline=None)
@given(raw=documents(st.text("ab ", max_size=12)), data=st.data())  # few letters: repeated substrings
def test_valid_deletions_match_a_line_by_line_reference(raw: str, data: st.DataObject) -> None:
    lines = split_lines(raw)
    n = len(lines)
    span = st.integers(0, n - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a, n - 1)))
    spans = data.draw(st.lists(span, max_size=4))
    cuts: dict[int, str] = {}
    for i in data.draw(st.sets(st.integers(0, n - 1).filter(lambda i: lines[i] != ""), max_size=4)):
        a = data.draw(st.integers(0, len(lines[i]) - 1))
        cuts[i] = lines[i][a : data.draw(st.integers(a + 1, len(lines[i])))]
    ops = [f"remove_lines(start={a}, end={b})" for a, b in spans]
    ops += [f"remove_str(line={i}, text={t!r})" for i, t in cuts.items()]
    result = execute(raw, "\n".join(data.draw(st.permutations(ops))))

    expected = [
        line.replace(cuts[i], "") if i in cuts else line
        for i, line in enumerate(lines)
        if not any(a <= i <= b for a, b in spans)
    ]
    assert result.text == "\n".join(expected)
    assert (result.n_applied, result.n_rejected) == (len(ops), 0)


# The canonical-line fast path must mean exactly what ast.parse makes of the same line: build
# each op line twice, once canonically (fast path) and once with no space after the comma (a
# form the fast path does not match, so it goes through ast), and demand identical results.
_fast_ints = st.one_of(st.integers(0, 20), st.integers(0, 10**19), st.sampled_from(["01", "007", "0"]).map(str))
_fast_texts = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=12) | st.sampled_from(
    ["a'b", 'a"b', "back\\slash", "\x00nul", "tab\there", "\ud800", ""])


@given(kind=st.sampled_from(["lines", "str", "keep"]), a=_fast_ints, b=_fast_ints, text=_fast_texts,
       quote=st.sampled_from(["'", '"']))
@settings(max_examples=300, deadline=None)
def test_fast_path_agrees_with_ast(kind, a, b, text, quote):
    def fmt(sep: str) -> str:
        if kind == "keep":
            return "keep_all()" if sep == ", " else "keep_all( )"
        if kind == "lines":
            return f"remove_lines(start={a}{sep}end={b})"
        return f"remove_str(line={a}{sep}text={quote}{text}{quote})"

    fast, slow = parse_program(fmt(", ")), parse_program(fmt(","))
    assert fast.ops == slow.ops
    assert [r.reason for r in fast.rejected] == [r.reason for r in slow.rejected]
    if fast.ops:  # the outcome shows the op's canonical text, whichever way it was written
        shown = execute("x\n" * 30, fmt(", ")).outcomes[0].op
        assert shown == render_op(fast.ops[0])
