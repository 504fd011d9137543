"""Diff rendering: deleted spans replayed from programs / op_outcomes, attributed, escaped."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinex_spark.chunking import normalize_newlines
from refinex_spark.config import ProgramConfig
from refinex_spark.diff import compute_diff, render_diff
from refinex_spark.program import ChunkProgram, execute

GOLDEN = Path(__file__).parent / "golden"
_PRE = re.compile(r'<pre class="refinex-diff-text">(.*?)</pre>', re.DOTALL)


def pre_text(rendered: str) -> str:
    """The <pre> element's text as a browser reads it: HTML ignores a newline right after <pre>."""
    (body,) = _PRE.findall(rendered)
    return body.removeprefix("\n")


def refined_of(rendered: str) -> str:
    return html.unescape(re.sub(r"<del\b[^>]*>.*?</del>", "", pre_text(rendered), flags=re.DOTALL))


def raw_of(rendered: str) -> str:
    return html.unescape(re.sub(r"</?del\b[^>]*>", "", pre_text(rendered)))


def outcomes_json(refinement) -> str:
    return json.dumps([{"op": o.op, "applied": o.applied, "reason": o.reason} for o in refinement.outcomes])


# Lines full of characters HTML cares about, so escaping is exercised by every example.
line_text = st.text(alphabet="ab <>&\"'/;=x", max_size=12)
documents = st.tuples(st.lists(line_text, min_size=1, max_size=7), st.sampled_from(["\n", "\r\n"])).map(
    lambda t: t[1].join(t[0]))


@st.composite
def programs(draw, raw: str, first: int = 0, last: int | None = None) -> str:
    """Ops over lines first..last (sometimes past them): mostly valid, some rejected, some garbage."""
    lines = normalize_newlines(raw).split("\n")
    last = len(lines) - 1 if last is None else last
    out = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["lines", "str", "str", "keep", "garbage"]))
        if kind == "lines":
            start = draw(st.integers(first, last + 1))
            out.append(f"remove_lines(start={start}, end={draw(st.integers(start, last + 1))})")
        elif kind == "str":
            line = draw(st.integers(first, last))
            content = lines[line]
            if content and draw(st.booleans()):
                a = draw(st.integers(0, len(content) - 1))
                text = content[a:draw(st.integers(a + 1, len(content)))]
            else:
                text = draw(st.text(alphabet="ab<&", min_size=1, max_size=3))
            out.append(f"remove_str(line={line}, text={text!r})")
        elif kind == "keep":
            out.append("keep_all()")
        else:
            out.append(draw(st.sampled_from(["remove_lines(", "exec('x')", "remove_str(line=0)"])))
    return "\n".join(out)


@st.composite
def doc_and_program(draw):
    raw = draw(documents)
    return raw, draw(programs(raw))


@st.composite
def doc_and_chunk_programs(draw):
    raw = draw(documents)
    n = len(normalize_newlines(raw).split("\n"))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=3))) if n > 1 else []
    bounds = list(zip([0, *cuts], [c - 1 for c in cuts] + [n - 1]))
    return raw, [ChunkProgram(a, b, draw(programs(raw, a, b))) for a, b in bounds]


@settings(max_examples=200, deadline=None)
@given(doc_and_program())
def test_rendered_diff_strips_to_refined_and_unwraps_to_raw(case) -> None:
    raw, program = case
    rendered = render_diff(raw, program)
    assert refined_of(rendered) == execute(raw, program).text
    assert raw_of(rendered) == normalize_newlines(raw)


@settings(max_examples=200, deadline=None)
@given(doc_and_chunk_programs())
def test_op_outcomes_of_chunked_execution_replay_to_the_stored_text(case) -> None:
    """What a refined_docs row stores (chunk fallbacks included) replays to its refined_text."""
    raw, chunks = case
    result = execute(raw, chunks)
    diff = compute_diff(raw, op_outcomes=outcomes_json(result))
    assert diff.refined == result.text
    assert diff.raw == normalize_newlines(raw)
    assert len(diff.ops) == result.n_applied
    assert refined_of(diff.html()) == result.text


@settings(max_examples=200, deadline=None)
@given(doc_and_program())
def test_each_span_belongs_to_the_first_op_that_deletes_it(case) -> None:
    """Executing the first k+1 applied ops deletes exactly the spans attributed to ops 0..k."""
    raw, program = case
    diff = compute_diff(raw, program)
    for k in range(len(diff.ops)):
        prefix = execute(raw, "\n".join(diff.ops[: k + 1]))
        assert prefix.n_rejected == 0
        assert prefix.text == "".join(s.text for s in diff.spans if s.op is None or s.op > k)
    assert sum(diff.deleted_chars()) == len(diff.raw) - len(diff.refined)


def test_script_in_a_document_renders_as_text() -> None:
    raw = 'Intro\n<script>alert("x")</script> & <b>bold</b>\n<img src=x onerror=alert(1)>'
    program = "remove_lines(start=2, end=2)\nremove_str(line=1, text='<b>bold</b>')"
    rendered = render_diff(raw, program)
    assert "<script" not in rendered and "<b>" not in rendered and "<img" not in rendered
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; " in rendered
    assert raw_of(rendered) == raw
    assert refined_of(rendered) == 'Intro\n<script>alert("x")</script> & '


def test_spans_are_attributed_and_titled() -> None:
    raw = "Title\nHome | About\nBody. Share this\nFooter"
    program = "remove_lines(start=1, end=1)\nremove_str(line=2, text=' Share this')\nremove_lines(start=3, end=3)"
    diff = compute_diff(raw, program)
    deleted = [(s.text, diff.ops[s.op]) for s in diff.spans if s.op is not None]
    assert deleted == [
        ("Home | About\n", "remove_lines(start=1, end=1)"),
        (" Share this", "remove_str(line=2, text=' Share this')"),
        ("\nFooter", "remove_lines(start=3, end=3)"),  # the last line takes the newline before it
    ]
    assert diff.deleted_chars() == [13, 11, 7]
    rendered = diff.html()
    assert '<del style="color:red" title="2: remove_str(line=2, text=&#x27; Share this&#x27;)" data-op="2">' in rendered


def test_every_occurrence_of_a_remove_str_is_deleted() -> None:
    diff = compute_diff("a-x-b-x-c", "remove_str(line=0, text='-x')")
    assert [(s.text, s.op) for s in diff.spans] == [("a", None), ("-x", 0), ("-b", None), ("-x", 0), ("-c", None)]


def test_ops_not_applied_are_listed_with_their_reason_and_delete_nothing() -> None:
    raw = "one\ntwo\nthree"
    # Two rejected ops: the chunk falls back, so the valid remove_lines is not applied either.
    chunks = [ChunkProgram(0, 2, "remove_lines(start=0, end=0)\nremove_str(line=1, text='zz')\nfoo()")]
    result = execute(raw, chunks)
    diff = compute_diff(raw, op_outcomes=outcomes_json(result))
    assert diff.refined == raw and diff.ops == ()
    assert diff.rejected == (("remove_lines(start=0, end=0)", "chunk_fallback"),
                             ("remove_str(line=1, text='zz')", "text_not_in_line"),
                             ("foo()", "unknown_function"))
    assert "not applied (unknown_function)" in diff.html()


def test_no_program_keeps_everything() -> None:
    diff = compute_diff("a\nb")
    assert diff.refined == "a\nb" and diff.ops == ()
    assert compute_diff("").spans == ()


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="not both"):
        compute_diff("a", "keep_all()", op_outcomes="[]")
    with pytest.raises(ValueError, match="not in line"):  # op_outcomes of another text
        compute_diff("abc", op_outcomes=[{"op": "remove_str(line=0, text='zz')", "applied": True, "reason": ""}])
    with pytest.raises(ValueError, match="has 1 lines"):
        compute_diff("abc", op_outcomes=[{"op": "remove_lines(start=0, end=4)", "applied": True, "reason": ""}])
    with pytest.raises(ValueError, match="list of"):
        compute_diff("abc", op_outcomes='{"op": "keep_all()"}')
    with pytest.raises(ValueError, match="inserts text"):
        compute_diff("abc", "normalize(source_str='a', target_str='z')", config=ProgramConfig(dialect="prox"))


def test_prox_drop_doc_deletes_everything() -> None:
    diff = compute_diff("a\nb", "drop_doc()", config=ProgramConfig(dialect="prox"))
    assert diff.refined == "" and [s.op for s in diff.spans] == [0]


def test_rendering_matches_golden() -> None:
    raw = "Menu: Home | News\nThe <em>article</em> & its text. Click here!\nMore text.\nCookie banner"
    program = ("remove_lines(start=0, end=0)\nremove_str(line=1, text=' Click here!')\n"
               "remove_lines(start=3, end=3)\nremove_str(line=2, text='nope')")
    assert render_diff(raw, program) + "\n" == (GOLDEN / "diff_example.html").read_text(encoding="utf-8")


def test_a_row_refined_in_the_other_dialect_replays() -> None:
    """op_outcomes of a ProX run replay under the default (RefineX) config, as the report and the audit
    notebook read rows whatever dialect refined them; the canonical ops say which dialect wrote them."""
    raw = "Menu | Home\nThe story.\nShare this"
    prox = execute(raw, "remove_lines(line_start=0, line_end=0)\nremove_lines(line_start=2, line_end=2)",
                   ProgramConfig(dialect="prox"))
    stored = json.dumps([{"op": o.op, "applied": o.applied, "reason": o.reason} for o in prox.outcomes])
    diff = compute_diff(raw, op_outcomes=stored)
    assert diff.refined == prox.text == "The story."
    assert list(diff.ops) == ["remove_lines(line_start=0, line_end=0)", "remove_lines(line_start=2, line_end=2)"]
    with pytest.raises(ValueError, match="inserts text"):  # normalize still cannot be shown as deletions
        compute_diff(raw, op_outcomes=[{"op": "normalize(source_str='|', target_str='/')", "applied": True}])
