"""Distillation: align a raw document with its expert rewrite and keep only the deletions.

The expert ("remove the noise, change nothing else") returns free text. We align it with the raw
text by minimal edit distance, keep what the expert deleted, discard what it inserted or replaced
(counting those characters as illegal), and express the deletions as a program over the raw
document's numbered lines: `remove_lines` for lines deleted whole, `remove_str` for deletions
inside a line. Each chunk of the raw document (what the refine model reads) becomes one training
sample with the ops that fall inside it.

Alignment is hierarchical, so that its cost follows the size of what changed rather than the
square of the document size:

1. lines, compared by their whitespace-collapsed content, matching as many equal lines as
   possible (rapidfuzz's Indel opcodes over lines interned to ints); equal lines need nothing more;
2. each maximal run of unequal lines (a paragraph with an ad spliced in, lines the expert
   re-wrapped or merged, a menu next to a paragraph) is aligned as joined text by words, the same way;
3. each run of unequal words, by characters (`Levenshtein.opcodes`: a changed character is a
   replacement, illegal, rather than a legal deletion plus an insertion).

An exact minimal alignment is not unique: when the expert only deleted, every embedding of the
kept text in the raw text costs the same, and the aligner's pick may scatter a deletion into
pieces remove_str cannot express (too short, or repeated in the line). Such regions also try
equivalent deletions (see `_region_plan`, `_partial_line_texts`). A run too large to align
(an unrelated rewrite of a huge document) is counted as replaced: nothing is deleted there.

`alignment="flat"` aligns the whole texts character by character instead: the quadratic
baseline of `python -m refinex_spark.bench core`; everything after the alignment is shared.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from itertools import accumulate
from typing import Literal

import Levenshtein
import numpy as np
from rapidfuzz.distance import Indel

from refinex_spark.chunking import Chunk, chunk_lines, split_lines
from refinex_spark.config import ChunkingConfig, DistillConfig, ProgramConfig
from refinex_spark.program import ChunkProgram, Op, execute, render_program

Alignment = Literal["hierarchical", "flat"]
DOC_DROP_REASONS = ("illegal_edits", "deletes_everything")
DROP_REASONS = (*DOC_DROP_REASONS, "too_many_ops", "unexpressible", "keep_all_sampled_out")

# Largest alignments attempted (raw tokens x expert tokens; the bit-parallel aligner costs about
# cells / 64 word operations). Lines, and words of a run of unequal lines: 100k x 100k is ~2 s (a
# forum page whose every comment line lost its "Reply" is one run of thousands of lines). Chars in
# a run of unequal words: 15k x 15k is ~0.1 s; only an unrelated rewrite of a large document gets
# past it, and its edits are illegal anyway.
_MAX_LINE_CELLS = 10**10
_MAX_CELLS = 250_000_000
_MAX_LCS_CELLS = 400_000_000
# remove_str text longer than the parser accepts would be rejected at execution.
_MAX_REMOVE_STR_CHARS = ProgramConfig().max_text_chars
_SPACES = re.compile(r"(\s+)")  # \s is str.isspace(), as str.split() uses
_ANY_SPACE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class Sample:
    chunk_index: int
    start_line: int  # global 0-based, inclusive
    end_line: int
    prompt: str  # Chunk.text (numbered lines)
    program: str  # canonical program text for this chunk (global line numbers)
    n_ops: int
    kept: bool
    drop_reason: str | None  # one of DROP_REASONS when not kept


@dataclass(frozen=True, slots=True)
class DistillStats:
    raw_chars: int  # after newline normalisation
    expert_chars: int
    deleted_chars: int  # characters the program deletes when executed
    inserted_chars: int  # non-whitespace expert characters with no raw counterpart
    replaced_chars: int  # non-whitespace expert characters aligned to different raw characters
    illegal_fraction: float  # (inserted + replaced) / raw_chars
    deleted_fraction: float  # deleted / raw_chars
    n_ops: int  # ops of the whole-document program
    n_chunks: int
    fidelity: float  # word-shingle F1 of the executed program's output against the expert text
    kept: bool
    drop_reason: str | None  # one of DOC_DROP_REASONS when not kept


@dataclass(frozen=True, slots=True)
class DistillResult:
    program: str  # whole-document program (ranges not split at chunk boundaries)
    samples: tuple[Sample, ...]
    stats: DistillStats


def _nonspace(text: str) -> int:
    return len("".join(text.split()))


class _Region:
    """A stretch of raw text [start, end) aligned on its own, and the spans the alignment deleted.

    Hierarchical regions are whole lines (a run of unequal lines, with their newlines); the flat
    alignment has one region, the whole text. Ops are chosen region by region. `expert` is the
    expert text [b0, b1) a word-aligned region was aligned with (None: not word-aligned).
    """

    __slots__ = ("start", "end", "expert", "deleted", "illegal")

    def __init__(self, start: int, end: int, expert: tuple[int, int] | None = None) -> None:
        self.start, self.end, self.expert = start, end, expert
        self.deleted: list[tuple[int, int]] = []  # sorted, disjoint, merged [start, end) raw offsets
        self.illegal = 0  # non-space expert chars inserted or replaced inside the region

    def delete(self, a: int, b: int) -> None:
        if self.deleted and self.deleted[-1][1] == a:
            self.deleted[-1] = (self.deleted[-1][0], b)
        else:
            self.deleted.append((a, b))


class _Edits:
    """What an alignment says: regions with their deletions, and the illegal expert chars."""

    __slots__ = ("raw", "expert", "regions", "inserted", "replaced")

    def __init__(self, raw: str, expert: str) -> None:
        self.raw, self.expert = raw, expert
        self.regions: list[_Region] = []
        self.inserted = 0
        self.replaced = 0

    def region(self, start: int, end: int, expert: tuple[int, int] | None = None) -> _Region:
        self.regions.append(_Region(start, end, expert))
        return self.regions[-1]

    def insert(self, b0: int, b1: int, region: _Region | None = None) -> None:
        n = _nonspace(self.expert[b0:b1])
        self.inserted += n
        if region is not None:
            region.illegal += n

    def replace(self, b0: int, b1: int, region: _Region | None = None) -> None:
        n = _nonspace(self.expert[b0:b1])
        self.replaced += n
        if region is not None:
            region.illegal += n


def _align_chars(edits: _Edits, region: _Region, a0: int, a1: int, b0: int, b1: int) -> None:
    """Characters, every whitespace char read as a space (offsets unchanged): the expert turning a
    tab, a no-break space or a line break into a space is no edit, where a substitution would tie
    with pairing a deleted char with that space, and keep the noise ("storm[1]\xa0hit")."""
    raw, expert = _ANY_SPACE.sub(" ", edits.raw[a0:a1]), _ANY_SPACE.sub(" ", edits.expert[b0:b1])
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(raw, expert):
        if tag == "delete":
            region.delete(a0 + i1, a0 + i2)
        elif tag == "insert":
            edits.insert(b0 + j1, b0 + j2, region)
        elif tag == "replace":
            edits.replace(b0 + j1, b0 + j2, region)


def _align_deletion(edits: _Edits, region: _Region, a0: int, a1: int, b0: int, b1: int) -> bool:
    """Align a run by its non-space characters when the expert's are the raw's less some (a pure
    deletion, whitespace aside) and deleting them leaves the expert's text, whitespace collapsed; say
    whether it did. There a substitution can tie with the deletion: a line break the expert typed for
    a deleted space, paired with a raw space, pays for replacing a kept letter ("bc de" -> "\nbe" kept
    "de"). A run of deleted characters goes with the whitespace among them, and with the whitespace
    around them where the expert has none between the kept characters on either side. Otherwise (an
    embedding that glues words the expert keeps apart, say) the run is left to `_align_chars`."""
    raw, expert = edits.raw, edits.expert
    ra = [i for i in range(a0, a1) if not raw[i].isspace()]
    eb = [j for j in range(b0, b1) if not expert[j].isspace()]
    if len(eb) > len(ra):
        return False
    ops = Indel.opcodes("".join(raw[i] for i in ra), "".join(expert[j] for j in eb))
    if any(op.tag in ("insert", "replace") for op in ops):
        return False
    kept = [(a0 - 1, b0 - 1)]  # (raw, expert) offsets of the kept characters, between the run's edges
    deleted = []  # (position among the kept ones, first and end non-space index) of each deleted run
    for op in ops:
        if op.tag == "equal":
            kept += zip(ra[op.src_start:op.src_end], eb[op.dest_start:op.dest_end])
        else:
            deleted.append((len(kept) - 1, op.src_start, op.src_end))
    kept.append((a1, b1))
    spans: list[tuple[int, int]] = []
    for k, first, end in deleted:
        (left, e_left), (right, e_right) = kept[k], kept[k + 1]
        start, stop = ra[first], ra[end - 1] + 1  # the deleted characters, and the whitespace among them
        if e_right - e_left == 1:  # the expert has no whitespace between the kept ones: nor will the raw
            spans.append((left + 1, right))
        elif start > left + 1 or stop < right:  # whitespace on a side stays
            spans.append((start, stop))
        elif gaps := [m.span() for m in _SPACES.finditer(raw, start, stop)]:
            # Only among them: one run stays, the one leaving the longer shorter piece (remove_str
            # cannot take one or two characters, or text repeated in the line).
            gap = max(gaps, key=lambda g: min(g[0] - start, stop - g[1]))
            spans += [(start, gap[0]), (gap[1], stop)]
        else:  # the raw text has none there: the expert's is an inserted space, which is no edit
            spans.append((start, stop))
    left_over = "".join(raw[i:j] for i, j in zip([a0, *(e for _, e in spans)], [*(s for s, _ in spans), a1]))
    if left_over.split() != expert[b0:b1].split():
        return False
    for span in spans:
        region.delete(*span)
    return True


Run = Callable[[int, int, int, int], None]
Opcodes = Callable[[list[int], list[int]], Iterable[tuple[str, int, int, int, int]]]


def _lcs_opcodes(a: list[int], b: list[int]) -> list[tuple[str, int, int, int, int]]:
    """An alignment matching as many tokens as possible (insertions and deletions only).

    Lines and words are either equal or not: Levenshtein's one-cost substitution would rather pair
    a deleted raw line with a different expert line than match the expert line to its equal copy
    further on, turning a pure deletion into a rewrite. Indel keeps a bit matrix of len(a) x len(b)
    (50 MB at the cap); larger inputs (tens of thousands of lines a side) take Levenshtein's
    alignment, whose memory is linear.
    """
    if len(a) * len(b) > _MAX_LCS_CELLS:
        return Levenshtein.opcodes(a, b)
    return Indel.opcodes(a, b).as_list()


def _longest_match_opcodes(a: list[int], b: list[int]) -> list[tuple[str, int, int, int, int]]:
    """difflib's alignment: longest common block first, then recursively on either side."""
    return SequenceMatcher(None, a, b, autojunk=False).get_opcodes()


def _align_tokens(
    keys_a: list[str], bounds_a: list[int], keys_b: list[str], bounds_b: list[int],
    edits: _Edits, delete: Callable[[int, int], None], refine: Run, opcodes: Opcodes = _lcs_opcodes,
    region: _Region | None = None, max_cells: int = _MAX_CELLS,
) -> None:
    """Align token sequences by key; token i spans [bounds[i], bounds[i+1]) of its text.

    Tokens with equal keys differ at most in whitespace, which distillation ignores, so equal
    runs need no closer look. A maximal run of unequal tokens is deleted, inserted, or (when both
    sides have tokens) handed to `refine` as raw and expert offsets. Blank lines (empty keys) are
    weak anchors: which raw blank line matches which expert one is arbitrary, and a wrong guess
    can make a pure deletion look like a rewrite, so equal blank lines after an unequal run join
    it and are aligned with it.
    """
    if len(keys_a) * len(keys_b) > max_cells:
        edits.replace(bounds_b[0], bounds_b[-1], region)  # too big to align: keep raw, expert is illegal
        return
    ids: dict[str, int] = {}
    ia = [ids.setdefault(k, len(ids)) for k in keys_a]
    ib = [ids.setdefault(k, len(ids)) for k in keys_b]
    i0 = j0 = 0  # start of the current unequal run
    for tag, i1, i2, j1, j2 in [*opcodes(ia, ib), ("equal", len(ia), len(ia), len(ib), len(ib))]:
        if tag != "equal" or ((i0 < i1 or j0 < j1) and i1 < i2 and not any(keys_a[i1:i2])):
            continue
        a0, a1, b0, b1 = bounds_a[i0], bounds_a[i1], bounds_b[j0], bounds_b[j1]
        if a0 < a1 and b0 < b1:
            refine(a0, a1, b0, b1)
        elif a0 < a1:
            delete(a0, a1)
        elif b0 < b1:
            edits.insert(b0, b1, region)
        i0, j0 = i2, j2


def _words(text: str, start: int, end: int) -> tuple[list[str], list[int]]:
    """Words of text[start:end]; a word's token runs to the next word so the tokens tile the range.

    With no word at all the (whitespace-only) range has no tokens: whitespace edits are ignored.
    (re.split + accumulate keep the per-word work in C: this runs over most of a noisy text.)
    """
    parts = _SPACES.split(text[start:end])  # word, space, word, ..., word ('' at a space edge)
    offsets = list(accumulate(map(len, parts), initial=start))
    keys, starts = parts[0::2], offsets[0::2]
    if keys[-1] == "":
        keys.pop()
    if keys and keys[0] == "":
        keys.pop(0)
        starts.pop(0)
    return keys, [start, *starts[1:len(keys)], end] if keys else [start]


def _align_words(edits: _Edits, region: _Region, opcodes: Opcodes = _lcs_opcodes,
                 max_cells: int = _MAX_LINE_CELLS) -> None:
    """Align a region by words, then by characters inside each run of unequal words.

    Characters alone would do, but a uniform-cost alignment of text with much deleted matches
    the expert's letters to letters scattered through the deleted ads and menus (any embedding
    of a subsequence has the same cost), leaving the deletion in unexpressible fragments. Words
    anchor the kept text where it really is, and keep character alignments small.
    """
    assert region.expert is not None

    def word_run(a0: int, a1: int, b0: int, b1: int) -> None:
        if (a1 - a0) * (b1 - b0) > _MAX_CELLS:
            edits.replace(b0, b1, region)
        elif not _align_deletion(edits, region, a0, a1, b0, b1):
            _align_chars(edits, region, a0, a1, b0, b1)

    keys_a, bounds_a = _words(edits.raw, region.start, region.end)
    keys_b, bounds_b = _words(edits.expert, *region.expert)
    _align_tokens(keys_a, bounds_a, keys_b, bounds_b, edits, region.delete, word_run, opcodes, region, max_cells)


def _line_bounds(lines: Sequence[str]) -> list[int]:
    """Offsets of each line in "\\n".join(lines), plus the text length; a line owns its "\\n"."""
    bounds = [0] * (len(lines) + 1)
    pos = 0
    for i, line in enumerate(lines):
        bounds[i] = pos
        pos += len(line) + 1
    bounds[-1] = pos - 1
    return bounds


def align(raw: str, raw_lines: list[str], expert: str, expert_lines: list[str], alignment: Alignment) -> _Edits:
    """The alignment step alone: which raw spans the expert deleted, and its illegal edits.

    `raw` is "\n".join(raw_lines), the lines as `split_lines` gives them (the same for expert).
    """
    edits = _Edits(raw, expert)
    if alignment == "flat":
        if raw:
            _align_chars(edits, edits.region(0, len(raw)), 0, len(raw), 0, len(expert))
        elif expert:
            edits.insert(0, len(expert))
        return edits

    def delete_lines(a0: int, a1: int) -> None:
        edits.region(a0, a1).delete(a0, a1)

    _align_tokens(
        [" ".join(line.split()) for line in raw_lines], _line_bounds(raw_lines),
        [" ".join(line.split()) for line in expert_lines], _line_bounds(expert_lines),
        edits, delete_lines, lambda a0, a1, b0, b1: _align_words(edits, edits.region(a0, a1, (b0, b1))),
        max_cells=_MAX_LINE_CELLS,
    )
    return edits


# --- from deleted spans to ops ------------------------------------------------------------------


def _common_run(a: str, i: int, b: str, j: int) -> int:
    """Length of the longest common prefix of a[i:] and b[j:], by galloping str.startswith."""
    n, step = 0, 1
    while j + n + step <= len(b) and a.startswith(b[j + n:j + n + step], i + n):
        n, step = n + step, step * 2
    while step > 1:
        step //= 2
        if j + n + step <= len(b) and a.startswith(b[j + n:j + n + step], i + n):
            n += step
    return n


def _embedding_gaps(text: str, kept: str, from_left: bool) -> list[tuple[int, int]]:
    """Spans of `text` to delete so that `kept` (a subsequence) takes its leftmost/rightmost chars."""
    if not from_left:
        n = len(text)
        return [(n - b, n - a) for a, b in reversed(_embedding_gaps(text[::-1], kept[::-1], True))]
    gaps: list[tuple[int, int]] = []
    pos = k = 0
    while k < len(kept):
        run = _common_run(text, pos, kept, k)
        if run:
            pos, k = pos + run, k + run
        else:
            nxt = text.index(kept[k], pos)
            gaps.append((pos, nxt))
            pos = nxt
    if pos < len(text):
        gaps.append((pos, len(text)))
    return gaps


def _kept_text(text: str, spans: Sequence[tuple[int, int]], offset: int = 0) -> str:
    """`text` without `spans` (given in offsets where text starts at `offset`)."""
    cuts = [offset, *(x for span in spans for x in span), offset + len(text)]
    return "".join(text[a - offset:b - offset] for a, b in zip(cuts[::2], cuts[1::2]))


def _slides(line: str, marked: bytearray, a: int, b: int) -> list[tuple[int, int]]:
    """Deletions of line[a:b] moved over kept chars that leave the same result, (a, b) first.

    Deleting [a, b) or [a-1, b-1) gives the same line when line[a-1] == line[b-1]: the alignment
    picked one of these arbitrarily, and another may be expressible where it is not.
    """
    c, d = a, b
    while c > 0 and not marked[c - 1] and line[c - 1] == line[d - 1]:
        c, d = c - 1, d - 1
    found = [(a, b)]
    while True:
        if (c, d) != (a, b):
            found.append((c, d))
        if d >= len(line) or marked[d] or line[c] != line[d]:
            return found
        c, d = c + 1, d + 1


def _unique_texts(line: str, spans: Sequence[tuple[int, int]], min_chars: int) -> tuple[list[str], int] | None:
    """The common case, without bookkeeping: each usable span's text occurs once in the line
    as it is when its turn comes. None when some span's text repeats (the general case)."""
    current, texts, removed = line, [], 0
    for a, b in spans:
        text = line[a:b]
        if len(text) < min_chars or len(text) > _MAX_REMOVE_STR_CHARS or text.isspace():
            continue
        p = a - removed  # every earlier op deleted exactly its own span, left of this one
        if current.find(text) != p or current.find(text, p + len(text)) != -1:
            return None
        texts.append(text)
        current = current[:p] + current[p + len(text):]
        removed += len(text)
    return texts, _nonspace(line) - _nonspace(current)


def _remove_str_texts(line: str, spans: Sequence[tuple[int, int]], min_chars: int) -> tuple[list[str], int]:
    """Texts whose `remove_str` ops, run in order on `line`, delete only what `spans` delete.

    remove_str deletes every (non-overlapping, left-to-right) occurrence, like str.replace. A
    text is usable if each of its occurrences in the line as it then is lies inside the deleted
    spans (`marked`), or if deleting them all leaves the same string as deleting just this span
    (overlapping periodic text). `origin` maps the current line's chars to original positions.
    Returns the texts and how many non-space chars they delete.
    """
    simple = _unique_texts(line, spans, min_chars)
    if simple is not None:
        return simple
    marked = bytearray(len(line))
    for a, b in spans:
        marked[a:b] = b"\x01" * (b - a)
    current, origin = line, list(range(len(line)))
    texts: list[str] = []
    for a, b in spans:
        p, q = bisect_left(origin, a), bisect_left(origin, b)
        n = q - p  # chars of the span still in the line: one block, since only deletions happened
        if n < min_chars or n > _MAX_REMOVE_STR_CHARS or current[p:q].isspace():
            continue
        # An intact span may move to an equivalent place; the rest of one that an earlier op's
        # occurrences cut into stays where it is.
        moves = _slides(line, marked, a, b) if n == b - a else [(a, b)]
        tried: set[str] = set()
        for c, d in moves:
            if n == b - a:
                p = bisect_left(origin, c)
                if p + n > len(origin) or origin[p + n - 1] != d - 1:
                    continue  # part of the moved span went with an earlier op
            text = current[p:p + n]
            if text in tried:
                continue
            tried.add(text)
            marked[a:b], marked[c:d] = bytes(b - a), b"\x01" * (d - c)
            hits, inside = _occurrences_inside(current, text, marked, origin)
            if not inside:
                hits = [p]  # acceptable only if the result equals deleting this block alone
                if current.replace(text, "") != current[:p] + current[p + n:]:
                    marked[c:d], marked[a:b] = bytes(d - c), b"\x01" * (b - a)  # would over-delete: undo
                    continue
            texts.append(text)
            current = current.replace(text, "")
            for h in reversed(hits):
                del origin[h:h + n]
            break
    return texts, _nonspace(line) - _nonspace(current)


def _occurrences_inside(current: str, text: str, marked: bytearray, origin: list[int]) -> tuple[list[int], bool]:
    """Where `text` occurs in `current`, and whether every occurrence lies in deleted (`marked`)
    chars; the search stops at the first one outside (on a repetitive line there are hundreds)."""
    hits, n = [], len(text)
    h = current.find(text)
    while h != -1:
        if not all(marked[o] for o in origin[h:h + n]):
            return hits, False
        hits.append(h)
        h = current.find(text, h + n)
    return hits, True


def _spare_spaces(line: str, spans: list[tuple[int, int]], min_chars: int,
                  unique: bool = False) -> list[tuple[int, int]]:
    """Spend kept whitespace that is redundant (whitespace collapsed) on better deletion spans.

    Two spans separated only by whitespace are joined (one op instead of two), and a span too
    short for remove_str (with `unique`, or whose text occurs elsewhere in the line) grows over
    adjacent whitespace, whenever the line still reads the same with whitespace collapsed:
    "a  bc de" minus "bc" is "a  de", minus " bc" it is "a de"; "Home News Home" loses its last
    word as " Home".
    """
    target = ""

    def same(candidate: list[tuple[int, int]]) -> bool:
        nonlocal target
        target = target or _squash(_kept_text(line, spans))
        return _squash(_kept_text(line, candidate)) == target

    out = list(spans)
    k = 0
    while k + 1 < len(out):
        (a, b), (c, d) = out[k], out[k + 1]
        if line[b:c].isspace() and same([*out[:k], (a, d), *out[k + 2:]]):
            out[k:k + 2] = [(a, d)]
        else:
            k += 1
    for k, (a, b) in enumerate(out):
        lo, hi = out[k - 1][1] if k else 0, out[k + 1][0] if k + 1 < len(out) else len(line)
        while b - a < min_chars or unique and (line.find(line[a:b]) != a or line.find(line[a:b], a + 1) != -1):
            if a > lo and line[a - 1].isspace() and same([*out[:k], (a - 1, b), *out[k + 1:]]):
                a -= 1
            elif b < hi and line[b].isspace() and same([*out[:k], (a, b + 1), *out[k + 1:]]):
                b += 1
            else:
                break
            out[k] = (a, b)
    return out


def _partial_line_texts(line: str, spans: list[tuple[int, int]], min_chars: int, search: bool) -> list[str]:
    """remove_str texts for a line deleted in part.

    When the alignment's own spans are not all expressible, the spans grown over whitespace until
    their texts are unique (a repeated word with its space: "Home News Home" loses " Home") are
    tried, and with `search` the leftmost and rightmost embeddings of the kept text too (same
    line, other deletion spans); the texts that delete most, in the fewest ops, win.
    """
    best = _remove_str_texts(line, _spare_spaces(line, spans, min_chars), min_chars)
    if best[1] == sum(_nonspace(line[a:b]) for a, b in spans):
        return best[0]
    candidates = [_spare_spaces(line, spans, min_chars, unique=True)]
    if search:
        kept = _kept_text(line, spans)
        candidates += [_spare_spaces(line, _embedding_gaps(line, kept, from_left), min_chars)
                       for from_left in (True, False)]
    for gaps in candidates:
        other = _remove_str_texts(line, gaps, min_chars)
        if (other[1], -len(other[0])) > (best[1], -len(best[0])):
            best = other
    return best[0]


class _Plan:
    """Ops for the lines of one region: lines removed whole, and remove_str texts per line."""

    __slots__ = ("first", "last", "removed", "blank", "str_ops", "exact")

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last  # the region's lines
        self.removed: list[int] = []  # lines whose non-whitespace content is all deleted
        self.blank: list[int] = []  # whitespace-only lines the alignment deleted
        self.str_ops: list[tuple[int, str]] = []
        self.exact = False  # known to delete every non-space char the alignment deleted

    def outcome(self, lines: list[str]) -> str:
        """The region's lines after the ops, whitespace collapsed (what fidelity compares)."""
        gone = set(self.removed)
        edited = _edited_lines(lines, self.str_ops)
        return _squash(" ".join(edited.get(i, lines[i]) for i in range(self.first, self.last + 1) if i not in gone))


def _edited_lines(lines: list[str], str_ops: Iterable[tuple[int, str]]) -> dict[int, str]:
    """The lines that remove_str ops (line, text), run in order, change, as they leave them."""
    edited: dict[int, str] = {}
    for i, text in str_ops:
        edited[i] = edited.get(i, lines[i]).replace(text, "")
    return edited


def _squash(text: str) -> str:
    return " ".join(text.split())


def _plan(
    lines: list[str], bounds: list[int], first: int, last: int, deleted: Sequence[tuple[int, int]],
    truncated: frozenset[int], min_chars: int, search: bool,
) -> _Plan:
    """Turn deleted raw spans within lines first..last into line removals and remove_str ops.

    `search`: look for equivalent deletions when a line's own are not expressible.
    """
    spans: dict[int, list[tuple[int, int]]] = {}
    newline_deleted: set[int] = set()  # lines whose own "\n" is deleted
    final = len(lines) - 1
    for s, e in deleted:
        i = bisect_right(bounds, s, first, last + 1) - 1
        while i <= last and bounds[i] < e:
            start = bounds[i]
            stop = start + len(lines[i])  # the line's "\n" sits at `stop` (except the final line)
            a, b = max(s, start), min(e, stop)
            if a < b:
                spans.setdefault(i, []).append((a - start, b - start))
            if i < final and s <= stop < e:
                newline_deleted.add(i)
            i += 1
    plan = _Plan(first, last)
    # A blank final line has no "\n" of its own: it goes with the one before it.
    tail = {final} if final - 1 in newline_deleted and last == final else set()
    for i in sorted(spans.keys() | newline_deleted | tail):
        line = lines[i]
        local = spans.get(i, [])
        if not line or line.isspace():
            if i in newline_deleted or i in tail:
                plan.blank.append(i)
        elif local == [(0, len(line))] or sum(map(_nonspace, (line[a:b] for a, b in local))) == _nonspace(line):
            plan.removed.append(i)
        elif local and i not in truncated:  # the model sees only part of a truncated line
            texts = _partial_line_texts(line, local, min_chars, search)
            plan.str_ops.extend((i, t) for t in (texts if search else _whole_words(line, texts)))
    return plan


def _whole_words(line: str, texts: list[str]) -> list[str]:
    """The texts that, run in order, start and end at word boundaries of the line as it then is.

    Where the expert also rewrote, a deletion that cuts a word ("Cookie Se|ttings") is the char
    alignment matching letters of the rewrite, not noise the expert removed.
    """
    kept, current = [], line
    for text in texts:
        i = current.find(text)
        j = i + len(text)
        if i < 0 or (i and current[i - 1].isalnum() and text[0].isalnum()) \
                or (j < len(current) and current[j].isalnum() and text[-1].isalnum()):
            continue
        kept.append(text)
        current = current.replace(text, "")
    return kept


def _region_plan(
    edits: _Edits, lines: list[str], bounds: list[int], region: _Region,
    truncated: frozenset[int], min_chars: int,
) -> _Plan:
    """The region's ops, from the alignment's deletions or an equivalent set that expresses more.

    The aligner returns one of many minimal alignments; for a pure deletion these differ only in
    which raw chars the kept text is matched to (e.g. a paragraph's words matched inside the
    deleted menu line above it, which leaves both lines partly deleted). When the ops do not
    reproduce the kept text (whitespace collapsed) and the expert only deleted here, other
    deletion sets are tried: the region re-aligned by longest common blocks of words (difflib;
    slower, so only here), and the leftmost and rightmost embeddings of the kept text. The plan
    whose outcome is shortest (then fewest ops) wins: each outcome contains the kept text, so
    shorter is closer.
    """
    first = bisect_right(bounds, region.start, 0, len(lines)) - 1
    last = len(lines) - 1 if region.end == len(edits.raw) else bisect_right(bounds, region.end - 1, 0, len(lines)) - 1
    pure = not region.illegal  # alternatives only help pure deletions; rewrites are dropped or rare
    best = _plan(lines, bounds, first, last, region.deleted, truncated, min_chars, pure)
    if not pure or region.deleted == [(region.start, region.end)]:
        best.exact = pure
        return best
    text = edits.raw[region.start:region.end]
    kept = _kept_text(text, region.deleted, region.start)
    target = _squash(kept)
    best_outcome = best.outcome(lines)
    if best_outcome == target:
        best.exact = True
        return best
    alternatives = [
        [(a + region.start, b + region.start) for a, b in _embedding_gaps(text, kept, from_left)]
        for from_left in (True, False)
    ]
    if region.expert is not None:
        scratch = _Edits(edits.raw, edits.expert)
        _align_words(scratch, scratch.region(region.start, region.end, region.expert), _longest_match_opcodes,
                     _MAX_CELLS)  # difflib is quadratic in time: only for runs of moderate size
        if not scratch.inserted + scratch.replaced:  # else its deletions need not keep the kept text
            alternatives.insert(0, scratch.regions[0].deleted)
    best_score = (len(best_outcome), len(best.removed) + len(best.str_ops))
    for deleted in alternatives:
        other = _plan(lines, bounds, first, last, deleted, truncated, min_chars, pure)
        outcome = other.outcome(lines)
        score = (len(outcome), len(other.removed) + len(other.str_ops))
        if score < best_score:
            best, best_score, best_outcome = other, score, outcome
    best.exact = best_outcome == target
    return best


def _line_ops(
    lines: list[str], bounds: list[int], edits: _Edits, truncated: frozenset[int], config: DistillConfig
) -> tuple[list[tuple[int, int]], list[tuple[int, str]], list[tuple[_Region, _Plan]]]:
    """Merged remove_lines ranges and (line, text) remove_str ops, both in line order, and each
    region with its plan."""
    removed: set[int] = set()
    blank: set[int] = set()
    str_ops: list[tuple[int, str]] = []
    plans = []
    for region in edits.regions:
        plan = _region_plan(edits, lines, bounds, region, truncated, config.min_remove_str_chars)
        removed.update(plan.removed)
        blank.update(plan.blank)
        str_ops.extend(plan.str_ops)
        plans.append((region, plan))
    # Deleted blank lines join the ranges around them (no extra ops) but never stand alone.
    ranges: list[tuple[int, int]] = []
    run: list[int] = []
    for i in sorted(removed | blank):
        if run and i != run[-1] + 1:
            _close_run(run, removed, ranges)
            run = []
        run.append(i)
    _close_run(run, removed, ranges)
    return ranges, str_ops, plans


def _close_run(run: list[int], removed: set[int], ranges: list[tuple[int, int]]) -> None:
    if any(i in removed for i in run):
        ranges.append((run[0], run[-1]))


def _ops_between(
    lo: int, hi: int, ranges: list[tuple[int, int]], str_ops: list[tuple[int, str]]
) -> list[Op]:
    """Ops touching lines lo..hi (inclusive), ranges clipped to it, in line order."""
    r = bisect_left(ranges, (lo, -1))
    if r and ranges[r - 1][1] >= lo:
        r -= 1  # a range that starts before lo and reaches into it
    found: list[tuple[int, Op]] = []
    while r < len(ranges) and ranges[r][0] <= hi:
        a, b = max(ranges[r][0], lo), min(ranges[r][1], hi)
        found.append((a, Op("remove_lines", start=a, end=b)))
        r += 1
    s = bisect_left(str_ops, (lo, ""))
    while s < len(str_ops) and str_ops[s][0] <= hi:
        line, text = str_ops[s]
        found.append((line, Op("remove_str", line=line, text=text)))
        s += 1
    found.sort(key=lambda t: t[0])  # stable: a line's remove_str ops keep their order
    return [op for _, op in found]


def shingle_f1(a: str, b: str, n: int = 3) -> float:
    """F1 of the multisets of word n-grams (n shrinks for texts shorter than n words)."""
    wa, wb = a.split(), b.split()
    if not wa or not wb:
        return float(not wa and not wb)
    k = min(n, len(wa), len(wb))
    common = _common_ngrams(wa, wb, k)
    return 2 * common / (len(wa) + len(wb) - 2 * (k - 1))


def _common_ngrams(wa: list[str], wb: list[str], k: int) -> int:
    """Size of the multiset intersection of the k-grams of wa and wb.

    Words become ids and a k-gram the number id_1 * V^(k-1) + ... + id_k, exact in int64 while
    V^k < 2^63; numpy then counts a megabyte of text in milliseconds. Tuples otherwise.
    """
    ids = {w: i for i, w in enumerate({**dict.fromkeys(wa), **dict.fromkeys(wb)})}
    if len(ids) ** k >= 2**63:
        ca = Counter(zip(*(wa[i:] for i in range(k))))
        cb = Counter(zip(*(wb[i:] for i in range(k))))
        return sum((ca & cb).values())
    ia = np.fromiter(map(ids.__getitem__, wa), np.int64, len(wa))
    ib = np.fromiter(map(ids.__getitem__, wb), np.int64, len(wb))
    ga, gb = ia[: len(ia) - k + 1].copy(), ib[: len(ib) - k + 1].copy()
    for i in range(1, k):
        ga = ga * len(ids) + ia[i: len(ia) - k + 1 + i]
        gb = gb * len(ids) + ib[i: len(ib) - k + 1 + i]
    ua, na = np.unique(ga, return_counts=True)
    ub, nb = np.unique(gb, return_counts=True)
    _, pa, pb = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
    return int(np.minimum(na[pa], nb[pb]).sum())


def keep_all_sampled(seed: int, prompt: str, ratio: float) -> bool:
    """Deterministic coin for keep_all samples: a retried Spark task decides the same way."""
    # surrogatepass: the pure API takes any str (ingest refuses lone surrogates; a caller may not)
    digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < ratio * 2**64


def distill(
    raw: str,
    expert: str,
    config: DistillConfig | None = None,
    chunking: ChunkingConfig | None = None,
    count_tokens: Callable[[str], int] | None = None,
    alignment: Alignment = "hierarchical",
    program: ProgramConfig | None = None,
) -> DistillResult:
    """Deletion program for `raw` from its expert rewrite, per-chunk samples, stats and filters.

    Programs use the raw document's global 0-based line numbers; each sample holds only its
    chunk's ops. Doc-level filters (illegal_edits, deletes_everything) drop every sample of the
    document; too_many_ops, unexpressible and keep_all sampling act per chunk. Never changes the raw text: the
    stats are measured by executing the chunk programs on it.
    """
    if alignment not in ("hierarchical", "flat"):
        raise ValueError(f"alignment must be 'hierarchical' or 'flat', got {alignment!r}")
    cfg = config or DistillConfig()
    raw_lines, expert_lines = split_lines(raw), split_lines(expert)
    raw_text, expert_text = "\n".join(raw_lines), "\n".join(expert_lines)
    chunks = chunk_lines(raw_lines, chunking, count_tokens)
    truncated = frozenset().union(*(c.truncated for c in chunks))

    edits = align(raw_text, raw_lines, expert_text, expert_lines, alignment)
    bounds = _line_bounds(raw_lines)
    ranges, str_ops, plans = _line_ops(raw_lines, bounds, edits, truncated, cfg)
    # The run's program limits, but always the RefineX dialect: that is what distillation writes,
    # whichever dialect the refine stage later runs (ProX models come trained).
    limits = program or ProgramConfig()
    if limits.dialect != "refinex":
        limits = limits.model_copy(update={"dialect": "refinex"})
    # Only ops the refine stage will accept under the run's program settings become training data.
    usable = lambda op: op.kind != "remove_str" or len(op.text or "") <= limits.max_text_chars  # noqa: E731
    all_ops = [_ops_between(c.start, c.end, ranges, str_ops) for c in chunks]
    chunk_ops = [[op for op in ops if usable(op)] for ops in all_ops]
    chunk_programs = [render_program(ops) for ops in chunk_ops]
    refined = execute(
        raw_text, [ChunkProgram(c.start, c.end, p, c.truncated) for c, p in zip(chunks, chunk_programs)], limits
    )

    n = len(raw_text)
    deleted = n - len(refined.text)
    illegal = (edits.inserted + edits.replaced) / n if n else float(bool(edits.inserted + edits.replaced))
    deleted_fraction = deleted / n if n else 0.0
    doc_reason = (
        "illegal_edits" if illegal > cfg.max_illegal_fraction
        else "deletes_everything" if deleted_fraction > cfg.max_deleted_fraction
        else None
    )
    if truncated:  # the whole-document program sees long lines in full: they may lose text too
        whole_ranges, whole_str_ops, _ = _line_ops(raw_lines, bounds, edits, frozenset(), cfg)
    else:
        whole_ranges, whole_str_ops = ranges, str_ops
    whole = [op for op in _ops_between(0, len(raw_lines) - 1, whole_ranges, whole_str_ops) if usable(op)]
    stats = DistillStats(
        raw_chars=n, expert_chars=len(expert_text), deleted_chars=deleted,
        inserted_chars=edits.inserted, replaced_chars=edits.replaced,
        illegal_fraction=illegal, deleted_fraction=deleted_fraction,
        n_ops=len(whole), n_chunks=len(chunks),
        fidelity=shingle_f1(refined.text, expert_text, cfg.shingle_size),
        kept=doc_reason is None, drop_reason=doc_reason,
    )
    # Counted only in regions whose ops are not known to reproduce the alignment (all of them when
    # the program settings dropped an op).
    filtered = any(len(ops) != len(kept) for ops, kept in zip(all_ops, chunk_ops))
    inexact = [(region, plan) for region, plan in plans if filtered or not plan.exact]
    missed = _missed_deletions(raw_lines, bounds, edits.raw, inexact, chunks, chunk_ops)
    samples = tuple(
        _sample(c, ops, program, doc_reason, m, cfg)
        for c, ops, program, m in zip(chunks, chunk_ops, chunk_programs, missed)
    )
    return DistillResult(program=render_program(whole), samples=samples, stats=stats)


def _missed_deletions(
    lines: list[str], bounds: list[int], raw: str, regions: list[tuple[_Region, _Plan]],
    chunks: Sequence[Chunk], chunk_ops: list[list[Op]],
) -> list[int]:
    """Per chunk, the non-space chars the expert deleted (per the alignment) in `regions` (each
    with its plan, which knows the region's lines) that its ops keep.

    Deletions the language cannot express (repeated or too short for remove_str, over the run's
    remove_str length) are what the program misses. A truncated line that stays counts for
    nothing: the model sees only part of it and may only remove it whole, so keeping it is right.
    """
    aligned: dict[int, int] = {}  # line -> non-space chars the alignment deleted there
    for region, plan in regions:
        aligned.update((i, 0) for i in range(plan.first, plan.last + 1))
        for a, b in region.deleted:
            i = bisect_right(bounds, a) - 1
            while a < b:  # a span may run over several lines
                stop = min(b, bounds[i + 1]) if i + 1 < len(lines) else b
                aligned[i] += _nonspace(raw[a:stop])
                a, i = stop, i + 1
    if not aligned:
        return [0] * len(chunks)
    firsts = [c.start for c in chunks]
    by_chunk: list[list[int]] = [[] for _ in chunks]
    for i in aligned:
        by_chunk[bisect_right(firsts, i) - 1].append(i)
    missed = []
    for chunk, ops, touched in zip(chunks, chunk_ops, by_chunk):
        edited = _edited_lines(lines, ((op.line, op.text) for op in ops if op.kind == "remove_str"))
        edited.update((i, "") for op in ops if op.kind == "remove_lines" for i in range(op.start, op.end + 1))
        expected = sum(aligned[i] for i in touched if i not in chunk.truncated or i in edited)
        done = sum(_nonspace(lines[i]) - _nonspace(text) for i, text in edited.items() if i in aligned)
        missed.append(max(0, expected - done))
    return missed


def _sample(
    chunk: Chunk, ops: list[Op], program: str, doc_reason: str | None, missed: int, cfg: DistillConfig
) -> Sample:
    reason = (
        doc_reason if doc_reason is not None
        else "too_many_ops" if len(ops) > cfg.max_ops_per_chunk
        # The program would teach the model to keep noise the expert removed.
        else "unexpressible" if missed > cfg.max_missed_chars_per_chunk
        else "keep_all_sampled_out" if not ops and not keep_all_sampled(cfg.seed, chunk.text, cfg.keep_all_ratio)
        else None
    )
    return Sample(
        chunk_index=chunk.index, start_line=chunk.start, end_line=chunk.end, prompt=chunk.text,
        program=program, n_ops=len(ops), kept=reason is None, drop_reason=reason,
    )


def distill_program(raw: str, expert: str) -> str:
    """The whole-document deletion program that brings `raw` closest to `expert` (defaults)."""
    return distill(raw, expert).program
