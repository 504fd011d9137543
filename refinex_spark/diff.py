"""Raw -> refined diffs: which characters a program deleted, which op deleted them, as safe HTML.

The report and both audit notebooks show refinements through `render_diff`. The deleted spans
are recomputed by replaying the program's applied ops on the raw text with the executor's own
semantics (`refinex_spark.program`): `remove_lines` deletes whole lines with their newline,
`remove_str` deletes every occurrence of its text in the line's current content (what earlier
`remove_str` ops on that line left). Each deleted character belongs to the first op, in program
order, that deleted it. Spans cover the newline-normalised raw text exactly (programs number
those lines): kept spans joined are the refined text, all spans joined are the raw text.

Given a stored row, pass its `op_outcomes`: they say which ops were applied after chunk-level
validation and fallback, so the replay reproduces the stored `refined_text`. Given a program
text, it is executed as one whole-document program first to learn which ops apply.

Everything from the document and the program is HTML-escaped: a raw document containing
`<script>` renders as text.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .chunking import normalize_newlines
from .config import ProgramConfig
from .program import DIALECTS, Op, execute, parse_program

# Shared by every rendered diff; the op number before a deleted span comes from CSS, so it is not
# part of the text (stripping the <del> elements still gives exactly the refined text).
_STYLE = (
    "<style>.refinex-diff pre{white-space:pre-wrap;overflow-wrap:anywhere;font-family:monospace;"
    "font-size:12px;line-height:1.4;margin:0;padding:6px;background:#fafafa;border:1px solid #ddd}"
    ".refinex-diff del{color:red;background:#fdecec}"
    ".refinex-diff del::before{content:attr(data-op);display:inline-block;font-size:70%;"
    "vertical-align:super;color:#a00;text-decoration:none;padding-right:1px}"
    ".refinex-diff .legend{font-size:12px;margin:4px 0 0 0}</style>"
)


@dataclass(frozen=True, slots=True)
class Span:
    text: str
    op: int | None  # 0-based index into Diff.ops of the op that deleted it; None when kept


@dataclass(frozen=True, slots=True)
class Diff:
    spans: tuple[Span, ...]
    ops: tuple[str, ...]  # applied ops in program order, as rendered by the executor
    rejected: tuple[tuple[str, str], ...]  # (op or program line, reason) of ops not applied

    @property
    def raw(self) -> str:
        return "".join(s.text for s in self.spans)

    @property
    def refined(self) -> str:
        return "".join(s.text for s in self.spans if s.op is None)

    def deleted_chars(self) -> list[int]:
        """Characters each applied op deleted (0 for an op whose text an earlier op already took)."""
        counts = [0] * len(self.ops)
        for s in self.spans:
            if s.op is not None:
                counts[s.op] += len(s.text)
        return counts

    def html(self, legend: bool = True) -> str:
        parts = []
        for s in self.spans:
            text = html.escape(s.text, quote=True)
            if s.op is None:
                parts.append(text)
            else:
                title = html.escape(f"{s.op + 1}: {self.ops[s.op]}", quote=True)
                parts.append(f'<del style="color:red" title="{title}" data-op="{s.op + 1}">{text}</del>')
        # HTML drops one newline right after <pre>: this one, not a leading blank line of the text.
        body = f'<pre class="refinex-diff-text">\n{"".join(parts)}</pre>'
        return f'<div class="refinex-diff">{_STYLE}{body}{self._legend() if legend else ""}</div>'

    def _legend(self) -> str:
        items = [f'<li value="{i + 1}"><code>{html.escape(op)}</code>: {n} chars deleted</li>'
                 for i, (op, n) in enumerate(zip(self.ops, self.deleted_chars()))]
        items += [f"<li><code>{html.escape(op)}</code>: not applied ({html.escape(reason)})</li>"
                  for op, reason in self.rejected]
        if not items:
            return '<p class="legend">no ops</p>'
        return f'<ol class="legend">{"".join(items)}</ol>'


def _outcome_list(op_outcomes: str | Sequence[Mapping]) -> list[Mapping]:
    items = json.loads(op_outcomes) if isinstance(op_outcomes, str) else op_outcomes
    if not isinstance(items, list) or not all(isinstance(o, Mapping) and "op" in o for o in items):
        raise ValueError("op_outcomes must be a list of {op, applied, reason} objects")
    return items


def _applied_ops(raw_text: str, program: str | None, op_outcomes: str | Sequence[Mapping] | None,
                 cfg: ProgramConfig) -> tuple[list[tuple[str, Op]], list[tuple[str, str]]]:
    """(rendered op, Op) of every applied op in program order, and (op, reason) of the others."""
    if program is not None and op_outcomes is not None:
        raise ValueError("pass a program or its op_outcomes, not both")
    if program is not None:
        outcomes = [{"op": o.op, "applied": o.applied, "reason": o.reason}
                    for o in execute(raw_text, program, cfg).outcomes]
    else:
        outcomes = _outcome_list(op_outcomes) if op_outcomes is not None else []
    applied, rejected = [], []
    for o in outcomes:
        if not o.get("applied"):
            rejected.append((str(o["op"]), str(o.get("reason") or "")))
            continue
        applied.append((o["op"], _one_op(str(o["op"]), cfg)))
    return applied, rejected


def _one_op(text: str, cfg: ProgramConfig) -> Op:
    """The op of a stored applied op, in whichever dialect wrote it: a row refined under the other
    dialect than `cfg`'s replays too (canonical ops of the two dialects never read alike)."""
    for dialect in sorted(DIALECTS, key=lambda d: d != cfg.dialect):
        parsed = parse_program(text, dialect, cfg)
        if len(parsed.ops) == 1 and not parsed.rejected:
            return parsed.ops[0]
    raise ValueError(f"applied op does not parse as one op: {text!r}")


def compute_diff(raw_text: str, program: str | None = None, *,
                 op_outcomes: str | Sequence[Mapping] | None = None,
                 config: ProgramConfig | None = None) -> Diff:
    """Spans of the newline-normalised `raw_text`, each kept or attributed to the op that deleted it.

    Raises ValueError when an applied op does not replay on this text (op_outcomes of another
    text) or inserts text (ProX `normalize`), which a deletion diff cannot show.
    """
    cfg = config or ProgramConfig()
    applied, rejected = _applied_ops(raw_text, program, op_outcomes, cfg)
    text = normalize_newlines(raw_text)
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    owner: list[int | None] = [None] * len(text)  # op that deleted each char by remove_str / drop_doc
    # Per line remove_str touched: its content as the next remove_str sees it, and where each of
    # its chars is in `text`; kept up to date in C (str.replace, del of slices), not char by char.
    edited: dict[int, tuple[str, list[int]]] = {}
    line_owner: list[int | None] = [None] * len(lines)  # first remove_lines op of each line

    for k, (shown, op) in enumerate(applied):
        if op.kind == "remove_lines":
            assert op.start is not None and op.end is not None
            if op.end >= len(lines):
                raise ValueError(f"op {shown!r} does not replay: the text has {len(lines)} lines")
            for i in range(op.start, op.end + 1):
                if line_owner[i] is None:
                    line_owner[i] = k
        elif op.kind == "remove_str":
            assert op.line is not None and op.text
            if op.line >= len(lines):
                raise ValueError(f"op {shown!r} does not replay: the text has {len(lines)} lines")
            content, where = edited.get(op.line) or (
                lines[op.line], list(range(starts[op.line], starts[op.line] + len(lines[op.line]))))
            n = len(op.text)
            hits = []
            hit = content.find(op.text)
            while hit >= 0:  # str.replace's matches: non-overlapping, left to right
                hits.append(hit)
                hit = content.find(op.text, hit + n)
            if not hits:
                raise ValueError(f"op {shown!r} does not replay: its text is not in line {op.line}")
            for hit in reversed(hits):
                for p in where[hit:hit + n]:
                    owner[p] = k if owner[p] is None else owner[p]
                del where[hit:hit + n]
            edited[op.line] = (content.replace(op.text, ""), where)
        elif op.kind == "drop_doc":
            owner = [k if o is None else o for o in owner]
        elif op.kind == "normalize":
            raise ValueError(f"op {shown!r} inserts text; a deletion diff cannot show it")
        # keep_all, keep_doc, skip_chunk change nothing

    # A deleted char belongs to the first op after which it is gone. Line i's newline is gone once
    # line i is removed, or once every line after it is (then it separates nothing): the executor
    # joins kept lines with "\n", and this choice of newlines is the one that only grows op by op.
    never = len(applied)
    removed_at = [never if k is None else k for k in line_owner]

    def take(p: int, k: int) -> None:
        if k < never and (owner[p] is None or k < owner[p]):
            owner[p] = k

    after = -1  # when every line after line i is removed (never, if one is kept)
    for i in range(len(lines) - 1, -1, -1):
        for p in range(starts[i], starts[i] + len(lines[i])):
            take(p, removed_at[i])
        if i < len(lines) - 1:
            take(starts[i] + len(lines[i]), min(removed_at[i], after))
        after = max(after, removed_at[i])

    spans: list[Span] = []
    run_start = 0
    for p in range(1, len(text) + 1):
        if p == len(text) or owner[p] != owner[run_start]:
            spans.append(Span(text[run_start:p], owner[run_start]))
            run_start = p
    return Diff(tuple(spans), tuple(shown for shown, _ in applied), tuple(rejected))


def render_diff(raw_text: str, program: str | None = None, *,
                op_outcomes: str | Sequence[Mapping] | None = None,
                config: ProgramConfig | None = None, legend: bool = True) -> str:
    """HTML of `raw_text` with every deleted span in `<del style="color:red">`, titled with its op.

    The text is inside `<pre class="refinex-diff-text">`; with `legend`, a numbered list of the
    applied ops (chars each deleted) and of the ops not applied (with their reason) follows it.
    """
    return compute_diff(raw_text, program, op_outcomes=op_outcomes, config=config).html(legend)
