"""The deletion-program language: parse, validate, execute and render (DESIGN.md, "The program language").

A program is model output, so it is data: each line is read with `ast.parse` and checked against a
whitelist of call names and literal arguments; nothing is ever evaluated. Checking happens in two
passes. `parse_program` is syntactic (names, arguments, literal types, bounds from `ProgramConfig`)
and never raises, whatever it is given. `execute` validates the parsed ops against the document
(line ranges, the chunk the model saw, the current content of a line), applies the valid ones in
program order, and keeps a chunk unchanged when too many of its ops were rejected (ProX's rule).

Two dialects share one signature table, used both to parse and to render:

    refinex: keep_all()  remove_lines(start=, end=)  remove_str(line=, text=)
    prox:    remove_lines(line_start=, line_end=)  normalize(source_str=, target_str=)
             keep_doc()  drop_doc()  skip_chunk()

A RefineX program can only delete, so its output is a subsequence of the newline-normalised input.
`normalize` (ProX only) is the one op that inserts text.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Literal, NamedTuple

from refinex_spark.chunking import normalize_newlines
from refinex_spark.config import ProgramConfig

REJECT_REASONS = (
    "malformed",
    "unknown_function",
    "not_in_dialect",
    "bad_argument",
    "out_of_range",
    "outside_chunk",
    "text_not_in_line",
    "empty_text",
    "truncated_line",
    "too_long",
    "too_many_ops",
)
CHUNK_FALLBACK = "chunk_fallback"
DIALECTS = ("refinex", "prox")
_SOURCE_CHARS = 200  # Rejection.source is cut to this length
_DEFAULTS = ProgramConfig()  # frozen: one instance serves every call without a config


# Op and OpOutcome are built once per op of every document executed: NamedTuples, immutable as a
# frozen dataclass is, are built in under half its time.
class Op(NamedTuple):
    kind: str  # keep_all | remove_lines | remove_str | normalize | keep_doc | drop_doc | skip_chunk
    start: int | None = None  # remove_lines first line, inclusive (ProX: line_start)
    end: int | None = None  # remove_lines last line, inclusive (ProX: line_end)
    line: int | None = None  # remove_str line
    text: str | None = None  # remove_str text; normalize source_str
    target: str | None = None  # normalize target_str


@dataclass(frozen=True, slots=True)
class Rejection:
    source: str  # the offending program line as written (stripped, cut to 200 chars)
    reason: str  # one of REJECT_REASONS
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Program:
    ops: tuple[Op, ...]
    rejected: tuple[Rejection, ...]
    dialect: str


@dataclass(frozen=True, slots=True)
class ChunkProgram:
    """One chunk's program and the global lines [start, end] it may touch."""

    start: int
    end: int
    program: str
    truncated: frozenset[int] = frozenset()  # lines shown cut: removable only whole


class OpOutcome(NamedTuple):
    op: str  # rendered op, or the rejected source line
    applied: bool
    reason: str = ""  # rejection reason, or CHUNK_FALLBACK for a valid op of a chunk that fell back
    chunk: int = 0  # position of the chunk program it came from (0: a whole-document program)


@dataclass(frozen=True, slots=True)
class Refinement:
    text: str
    # ok (text changed) | kept (unchanged, nothing rejected) | fallback (text unchanged: a chunk fell back,
    # or an op was rejected) | dropped
    status: str
    outcomes: tuple[OpOutcome, ...]  # every op and rejection in program order, chunk by chunk
    n_applied: int
    n_rejected: int
    fallback_chunks: tuple[int, ...]  # positions of the chunks that fell back
    deleted_chars: int  # len(normalised raw) - len(text)


@dataclass(frozen=True, slots=True)
class _Param:
    name: str  # keyword as written in the dialect
    field: str  # Op field it fills
    kind: Literal["line", "text"]
    may_be_empty: bool = False


_SIGNATURES: dict[str, dict[str, tuple[_Param, ...]]] = {
    "refinex": {
        "keep_all": (),
        "remove_lines": (_Param("start", "start", "line"), _Param("end", "end", "line")),
        "remove_str": (_Param("line", "line", "line"), _Param("text", "text", "text")),
    },
    "prox": {
        "remove_lines": (_Param("line_start", "start", "line"), _Param("line_end", "end", "line")),
        "normalize": (
            _Param("source_str", "text", "text"),
            _Param("target_str", "target", "text", may_be_empty=True),
        ),
        "keep_doc": (),
        "drop_doc": (),
        "skip_chunk": (),
    },
}
_KNOWN_NAMES = frozenset(name for sigs in _SIGNATURES.values() for name in sigs)
# What an empty program renders as: the dialect's explicit no-op.
_NOOP = {"refinex": "keep_all()", "prox": "skip_chunk()"}


def _signatures(dialect: str) -> dict[str, tuple[_Param, ...]]:
    try:
        return _SIGNATURES[dialect]
    except (KeyError, TypeError):
        raise ValueError(f"unknown program dialect {dialect!r} (allowed: {', '.join(DIALECTS)})") from None


def _max_line_chars(cfg: ProgramConfig) -> int:
    """Longest program line worth handing to `ast.parse`: the canonical rendering of any valid op.

    A canonical string is repr()-escaped, at most 10 chars per char ("\\U0010ffff"); an op has at
    most two strings, and its name, keywords and integers fit in the 100 spare chars.
    """
    return 2 * (10 * cfg.max_text_chars + 2) + 100


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def _line_number(value: object, param: _Param, cfg: ProgramConfig) -> int:
    if type(value) is not int:  # bool is an int subclass and is refused here
        raise _Reject("bad_argument", f"{param.name} must be a non-negative integer literal")
    if value > cfg.max_line_number:
        raise _Reject("out_of_range", f"{param.name} exceeds max_line_number={cfg.max_line_number}")
    return value  # negative numbers are UnaryOp nodes, refused above


def _text(value: object, param: _Param, cfg: ProgramConfig) -> str:
    if type(value) is not str:
        raise _Reject("bad_argument", f"{param.name} must be a plain string literal")
    if len(value) > cfg.max_text_chars:
        raise _Reject("too_long", f"{param.name} has {len(value)} chars, limit {cfg.max_text_chars}")
    if not value and not param.may_be_empty:
        raise _Reject("empty_text", f"{param.name} is empty")
    if param.field == "target" and ("\n" in value or "\r" in value):  # ops edit inside one line
        raise _Reject("bad_argument", f"{param.name} contains a line break")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject("bad_argument", f"{param.name} contains a lone surrogate") from None
    return value


_READ = {"line": _line_number, "text": _text}


def _name_as_written(line: str, node: ast.Name | ast.keyword) -> str:
    """The callee or keyword name as it appears in `line`, not as ast reports it: Python
    NFKC-normalises identifiers, so a fullwidth "ｒｅｍｏｖｅ_ｌｉｎｅｓ" would pass the whitelist."""
    return (ast.get_source_segment(line, node) or "").partition("=")[0].rstrip()


def _bind(call: ast.Call, params: tuple[_Param, ...], line: str) -> dict[str, ast.expr]:
    """Map each parameter to its argument node: positionals in declared order, then keywords."""
    if len(call.args) > len(params):
        raise _Reject("bad_argument", f"takes {len(params)} arguments, got {len(call.args)} positional")
    bound: dict[str, ast.expr] = {}
    for param, node in zip(params, call.args):
        if isinstance(node, ast.Starred):
            raise _Reject("bad_argument", "*args is not allowed")
        bound[param.name] = node
    names = {p.name for p in params}
    for kw in call.keywords:
        if kw.arg is None:
            raise _Reject("bad_argument", "**kwargs is not allowed")
        arg = _name_as_written(line, kw)
        if arg not in names:
            expected = ", ".join(p.name for p in params) or "no arguments"
            raise _Reject("bad_argument", f"unknown argument {arg!r} (expected {expected})")
        if arg in bound:
            raise _Reject("bad_argument", f"argument {arg!r} given twice")
        bound[arg] = kw.value
    missing = [p.name for p in params if p.name not in bound]
    if missing:
        raise _Reject("bad_argument", f"missing argument(s) {', '.join(missing)}")
    return bound


# Canonical RefineX lines (what render_program writes and trained models emit) skip ast.parse,
# which dominates execution time. Only forms with one unambiguous Python meaning match: ASCII
# decimals without leading zeros, and quoted strings with no backslash, no quote of their kind,
# no control character and no surrogate. Their values then go through the same checks.
_INT = r"(0|[1-9][0-9]{0,17})"
_STR = r"""(?:'([^'\\\x00-\x1f\x7f\ud800-\udfff]*)'|"([^"\\\x00-\x1f\x7f\ud800-\udfff]*)")"""
_FAST_LINE = re.compile(
    rf"remove_lines\(start={_INT}, end={_INT}\)|remove_str\(line={_INT}, text={_STR}\)|(keep_all)\(\)"
)


_KEEP_ALL = Op("keep_all")
# The parameters of the canonical forms, for the checks their values still go through.
_START, _END = _SIGNATURES["refinex"]["remove_lines"]
_LINE, _TEXT = _SIGNATURES["refinex"]["remove_str"]


def _canonical_op(m: re.Match, line: str, cfg: ProgramConfig) -> tuple[Op, str | None]:
    """The op of a line the fast pattern matched, and the line when it is the op's canonical text
    (saves rendering it again). The pattern fixed the literal types; the values are still checked."""
    start, end, line_no, single, double, keep = m.groups()
    if keep:
        return _KEEP_ALL, line
    if start is not None:
        return _in_order(Op("remove_lines", start=_line_number(int(start), _START, cfg),
                            end=_line_number(int(end), _END, cfg))), line
    op = Op("remove_str", line=_line_number(int(line_no), _LINE, cfg),
            text=_text(single if single is not None else double, _TEXT, cfg))
    # Canonical unless the string would render differently: double quotes, or a character repr()
    # escapes (it escapes exactly the non-printable ones here).
    return op, line if single is not None and single.isprintable() else None


def _make_op(name: str, params: tuple[_Param, ...], values: Sequence[object], cfg: ProgramConfig) -> Op:
    """Check literal argument values against the op's parameters and build the Op."""
    return _in_order(Op(name, **{p.field: _READ[p.kind](v, p, cfg) for p, v in zip(params, values)}))


def _in_order(op: Op) -> Op:
    if op.start is not None and op.end is not None and op.start > op.end:
        raise _Reject("bad_argument", f"start {op.start} > end {op.end}")
    return op


def _parse_line(line: str, signatures: dict[str, tuple[_Param, ...]], cfg: ProgramConfig) -> Op:
    """The op of a line in any other form, through `ast.parse`."""
    # Bound the input before ast sees it: its parser's cost and recursion grow with the line.
    if len(line) > _max_line_chars(cfg):
        raise _Reject("too_long", f"line has {len(line)} chars, limit {_max_line_chars(cfg)}")
    try:
        # Invalid escapes like "C:\d" only warn; silence that (model output would flood the logs),
        # and pin the filter so a process-wide "-W error" cannot turn it into a rejection.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(line, mode="eval")
    except Exception as e:  # SyntaxError, ValueError (NUL), RecursionError, MemoryError, UnicodeError
        raise _Reject("malformed", f"{type(e).__name__}: {e}"[:_SOURCE_CHARS]) from None
    return _call_to_op(tree.body, line, signatures, cfg)


def _call_to_op(call: ast.expr, line: str, signatures: dict[str, tuple[_Param, ...]], cfg: ProgramConfig) -> Op:
    if not isinstance(call, ast.Call):
        raise _Reject("malformed", "not a function call")
    if not isinstance(call.func, ast.Name):
        raise _Reject("unknown_function", "callee is not a plain name")
    name = _name_as_written(line, call.func)
    params = signatures.get(name)
    if params is None:
        if name in _KNOWN_NAMES:
            raise _Reject("not_in_dialect", f"{name}() belongs to another dialect")
        raise _Reject("unknown_function", f"{name}() (allowed: {', '.join(signatures)})")
    bound = _bind(call, params, line)
    literal = lambda node: node.value if isinstance(node, ast.Constant) else None  # noqa: E731
    return _make_op(name, params, [literal(bound[p.name]) for p in params], cfg)


def _rejection(source: str, reason: str, detail: str) -> tuple[Rejection, str]:
    rejection = Rejection(source[:_SOURCE_CHARS], reason, detail)
    return rejection, rejection.source


def _parse_entries(
    text: object, dialect: str, cfg: ProgramConfig, max_ops: int, max_chars: int
) -> list[tuple[Op | Rejection, str]]:
    """Ops and rejections in program order (execute reports outcomes in that order), each with
    the text its outcome shows: an op's canonical text, a rejection's source. `max_ops` and
    `max_chars` bound the program (execute grows cfg's for a whole-document program)."""
    signatures = _signatures(dialect)
    if not isinstance(text, str):
        return [_rejection(f"<{type(text).__name__}>", "malformed", "program is not a string")]
    if len(text) > max_chars:
        return [_rejection(text, "too_long", f"program has {len(text)} chars")]
    entries: list[tuple[Op | Rejection, str]] = []
    n_ops = 0
    # The canonical program must parse back to the same ops, so it is held to max_program_chars
    # too: repr() may write one source char as ten ("\U000e0001"). +1: the last line has no newline.
    room = max_chars + 1
    fast = _FAST_LINE.fullmatch if signatures is _SIGNATURES["refinex"] else None
    for raw_line in normalize_newlines(text).split("\n"):
        line = raw_line.strip()
        if not line or line.startswith("```"):  # blank lines and markdown fences around the program
            continue
        if n_ops >= max_ops:
            entries.append(_rejection(line, "too_many_ops", f"more than {max_ops} ops"))
            continue
        try:
            m = fast(line) if fast else None
            op, canonical = _canonical_op(m, line, cfg) if m else (_parse_line(line, signatures, cfg), None)
            canonical = canonical or render_op(op, dialect)
            if len(canonical) + 1 > room:
                raise _Reject("too_long", f"canonical program would exceed {max_chars} chars")
        except _Reject as r:
            entries.append(_rejection(line, r.reason, r.detail))
            continue
        room -= len(canonical) + 1
        n_ops += 1
        entries.append((op, canonical))
    return entries


def parse_program(text: object, dialect: str = "refinex", config: ProgramConfig | None = None) -> Program:
    """Syntactic parse; never raises on any `text` (a non-str is one 'malformed' rejection).

    Only an unknown `dialect` (a caller error, not model output) raises ValueError.
    """
    cfg = config or _DEFAULTS
    entries = [entry for entry, _ in _parse_entries(text, dialect, cfg, cfg.max_ops, cfg.max_program_chars)]
    return Program(
        ops=tuple(e for e in entries if isinstance(e, Op)),
        rejected=tuple(e for e in entries if isinstance(e, Rejection)),
        dialect=dialect,
    )


def render_op(op: Op, dialect: str = "refinex") -> str:
    """Canonical text of one op: keywords in declared order, values as repr() literals."""
    params = _signatures(dialect).get(op.kind)
    if params is None:
        raise ValueError(f"{op.kind}() is not an op of the {dialect} dialect")
    args = ", ".join([f"{p.name}={getattr(op, p.field)!r}" for p in params])
    return f"{op.kind}({args})"


def render_program(program_or_ops: Program | Sequence[Op], dialect: str | None = None) -> str:
    """Canonical program text, one op per line; the dialect's no-op when there are no ops.

    `dialect` defaults to the Program's own, or to "refinex" for a plain op sequence.
    """
    if isinstance(program_or_ops, Program):
        ops, dialect = program_or_ops.ops, dialect or program_or_ops.dialect
    else:
        ops, dialect = tuple(program_or_ops), dialect or "refinex"
    _signatures(dialect)  # ValueError on an unknown dialect, even with no ops
    return "\n".join(render_op(op, dialect) for op in ops) if ops else _NOOP[dialect]


class _Document:
    """Lines of the normalised text with the committed edits of the chunks executed so far."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.split("\n")
        self.edited: dict[int, str] = {}  # line -> current content, for lines changed by an op
        self.removed: list[tuple[int, int]] = []  # remove_lines ranges, inclusive
        self.dropped = False

    def render(self) -> str:
        if not self.edited and not self.removed:
            return self.text
        lines = self.lines
        if self.edited:
            lines = lines.copy()
            for i, content in self.edited.items():
                lines[i] = content
        if not self.removed:
            return "\n".join(lines)
        keep = bytearray(b"\x01") * len(lines)
        for start, end in self.removed:
            keep[start : end + 1] = bytes(end - start + 1)
        return "\n".join(compress(lines, keep))


class _ChunkRun:
    """Validates and applies one chunk's ops against an overlay, committed only if the chunk holds."""

    def __init__(self, doc: _Document, chunk: ChunkProgram, max_growth: int) -> None:
        self.doc, self.chunk = doc, chunk
        self.edits: dict[int, str] = {}
        self.removed: list[tuple[int, int]] = []
        self.drop = False
        # normalize may insert: its ops may make the chunk at most max_growth chars longer in all.
        self.max_growth, self.grown = max_growth, 0
        self.lo, self.hi = max(chunk.start, 0), min(chunk.end, len(doc.lines) - 1)
        self._view: list[str] | None = None  # the chunk's current lines, built for normalize

    def current(self, i: int) -> str:
        if i in self.edits:
            return self.edits[i]
        return self.doc.edited.get(i, self.doc.lines[i])

    def _edit(self, i: int, content: str) -> None:
        self.edits[i] = content
        if self._view is not None:
            self._view[i - self.lo] = content

    def _lines_containing(self, text: str) -> list[int]:
        """The chunk's lines (not shown truncated) that contain `text` now.

        One search over the joined lines, in C: a whole-document program's normalize ops would
        otherwise each loop over every line of the document.
        """
        if "\n" in text:
            return []
        if self._view is None:
            self._view = [self.current(i) for i in range(self.lo, self.hi + 1)]
        joined = "\n".join(self._view)
        hits: list[int] = []
        line, counted = self.lo, 0
        p = joined.find(text)
        while p != -1:
            line += joined.count("\n", counted, p)
            if line not in self.chunk.truncated:
                hits.append(line)
            counted = joined.find("\n", p)
            if counted == -1:
                break
            p = joined.find(text, counted + 1)
        return hits

    def _check_lines(self, first: int, last: int) -> str:
        if last >= len(self.doc.lines):
            return "out_of_range"
        if first < self.chunk.start or last > self.chunk.end:
            return "outside_chunk"
        return ""

    def apply(self, op: Op) -> str:
        """Apply `op` if it is valid here; return its rejection reason, or "" when applied."""
        if op.kind == "remove_lines":
            assert op.start is not None and op.end is not None
            reason = self._check_lines(op.start, op.end)
            if not reason:
                self.removed.append((op.start, op.end))
            return reason
        if op.kind == "remove_str":
            assert op.line is not None and op.text
            reason = self._check_lines(op.line, op.line)
            if reason:
                return reason
            if op.line in self.chunk.truncated:
                return "truncated_line"
            content = self.current(op.line)
            if op.text not in content:
                return "text_not_in_line"
            self._edit(op.line, content.replace(op.text, ""))
            return ""
        if op.kind == "normalize":
            assert op.text and op.target is not None
            # Lines shown cut are left alone: the model never saw most of them.
            hits = self._lines_containing(op.text)
            if not hits:
                return "text_not_in_line"
            growth = (len(op.target) - len(op.text)) * sum(self.current(i).count(op.text) for i in hits)
            if self.grown + growth > self.max_growth:  # e.g. 'a' -> 'aa' forty times: 2**40 chars
                return "too_long"
            self.grown += growth
            for i in hits:
                self._edit(i, self.current(i).replace(op.text, op.target))
            return ""
        if op.kind == "drop_doc":
            self.drop = True
        return ""  # keep_all, keep_doc, skip_chunk: valid no-ops

    def commit(self) -> None:
        self.doc.edited.update(self.edits)
        self.doc.removed.extend(self.removed)
        self.doc.dropped |= self.drop


def _whole_document_caps(cfg: ProgramConfig, n_chars: int, n_lines: int) -> tuple[int, int]:
    """`max_ops` and `max_program_chars` of one chunk's program, grown for a whole document's, as
    its chunks' would add up.

    Never below what a deletion program of the document can need, so that whatever `distill`
    writes runs: an op that does something removes a line or at least one char (n_lines + n_chars
    ops); a remove_lines call is under 64 chars, and a remove_str call under 34 plus its text, of
    which each char takes at most 10 written ("\U000e0001"): 44 per deleted char.
    """
    scale = max(1, math.ceil(n_chars / cfg.max_program_chars))
    max_ops = max(scale * cfg.max_ops, n_lines + n_chars)
    max_chars = max(scale * cfg.max_program_chars, 64 * n_lines + 44 * n_chars)
    return max_ops, max_chars


def execute(
    raw_text: str, programs: str | Sequence[ChunkProgram], config: ProgramConfig | None = None
) -> Refinement:
    """Run chunk programs over `raw_text` (a str program covers the whole document); never raises
    on program text (a list or tuple holding anything but ChunkProgram is a TypeError).

    Ops refer to global 0-based lines of the newline-normalised text. Each chunk is validated and
    applied in program order; a chunk with `max_rejected_per_chunk` or more rejections applies none
    of its ops. The dialect is `config.dialect`. `max_program_chars` and `max_ops` bound one chunk's
    program; a whole-document program gets both times ceil(len(normalised text) / max_program_chars),
    and at least what any deletion program of the text needs (see `_whole_document_caps`). The one op that
    inserts, ProX's `normalize`, may make its chunk at most `max_text_chars` chars longer in all.
    """
    cfg = config or _DEFAULTS
    norm = normalize_newlines(raw_text)
    doc = _Document(norm)
    caps = cfg.max_ops, cfg.max_program_chars
    if not isinstance(programs, (list, tuple)):  # one program text (parse_program vets its type)
        caps = _whole_document_caps(cfg, len(norm), len(doc.lines))
        programs = [ChunkProgram(0, len(doc.lines) - 1, programs)]
    elif not all(isinstance(c, ChunkProgram) for c in programs):  # a caller error, not model output
        raise TypeError("programs must be one program str or a sequence of ChunkProgram")
    outcomes: list[OpOutcome] = []
    fallback: list[int] = []
    n_applied = n_rejected = 0
    for position, chunk in enumerate(programs):
        run = _ChunkRun(doc, chunk, cfg.max_text_chars)
        verdicts = [  # (shown op, rejection reason or "")
            (shown, entry.reason if isinstance(entry, Rejection) else run.apply(entry))
            for entry, shown in _parse_entries(chunk.program, cfg.dialect, cfg, *caps)
        ]
        rejected = sum(1 for _, reason in verdicts if reason)
        n_rejected += rejected
        held = rejected < cfg.max_rejected_per_chunk
        if held:
            run.commit()
            n_applied += len(verdicts) - rejected
        else:
            fallback.append(position)
        outcomes += [OpOutcome(shown, held and not reason, reason or ("" if held else CHUNK_FALLBACK), position)
                     for shown, reason in verdicts]

    text = "" if doc.dropped else doc.render()
    if doc.dropped:
        status = "dropped"
    elif text != norm:
        status = "ok"
    else:  # unchanged: "kept" only when nothing was rejected (keep_all() beside a bad op is not a keep)
        status = "fallback" if fallback or n_rejected else "kept"
    return Refinement(
        text=text,
        status=status,
        outcomes=tuple(outcomes),
        n_applied=n_applied,
        n_rejected=n_rejected,
        fallback_chunks=tuple(fallback),
        deleted_chars=len(norm) - len(text),
    )


def apply_program(raw_text: str, program_text: str, config: ProgramConfig | None = None) -> str:
    """Refined text of `raw_text` under one whole-document program (RefineX dialect by default); the
    program's size caps scale with the document as in `execute`."""
    return execute(raw_text, program_text, config).text
