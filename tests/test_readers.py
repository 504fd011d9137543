"""File readers: every bad record kind becomes a reject with a reason; good ones become documents."""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinex_spark.config import IngestConfig
from refinex_spark import readers
from refinex_spark.readers import (REJECT_REASONS, WHOLE, Split, _remote_name, detect_format, list_input_files,
                                   plan_splits, read_file, resolve, text_hash)

BAD_LINES = [
    (b'{"id": "m", "text": "unterminated', "malformed_json"),
    (b'["a", "list"]', "not_an_object"),
    (b'{"id": "x"}', "missing_text"),
    (b'{"id": "n", "text": null}', "missing_text"),
    (b'{"id": "y", "text": 7}', "text_not_string"),
    (b'{"id": "z", "text": "  \\n "}', "empty_text"),
    (b'{"id": "u", "text": "caf\xe9"}', "invalid_utf8"),
    (b'{"id": "s", "text": "lone \\ud800 surrogate"}', "invalid_utf8"),
    (b'{"id": "big", "text": "' + b"a" * 200 + b'"}', "too_large"),
    (b'{"id": true, "text": "a bool is no id"}', "invalid_id"),
]

# Lines that once stopped a file (int() refuses > 4300 digits) or parsed into what JSON cannot write back.
MORE_BAD_LINES = [
    (b'{"id": "b", "text": "t", "n": ' + b"1" * 5000 + b"}", "malformed_json"),
    (b'{"id": "c", "text": "t", "score": NaN}', "malformed_json"),
    (b'{"id": Infinity, "text": "t"}', "malformed_json"),
    (b'{"id": "e", "text": "t", "x": 1e999}', "malformed_json"),
    (b'{"id": 1.0, "text": "t"}', "invalid_id"),
    (b'{"id": {"k": 1}, "text": "t"}', "invalid_id"),
    (b'{"id": [1], "text": "t"}', "invalid_id"),
]
GOOD_LINES = [(b'{"id": "g", "text": "good"}', None), (b'{"id": 7, "text": "int id"}', None),
              (b'{"text": "no id"}', None)]


def _bad_corpus(tmp_path):
    lines = [b'{"id": "good-1", "text": "Hello\\nworld", "lang": "en"}']
    lines += [line for line, _ in BAD_LINES]
    lines += [b"", b'{"text": "no id here"}']
    path = tmp_path / "mixed.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def test_every_bad_kind_is_a_reject_with_its_reason(tmp_path):
    cfg = IngestConfig(max_doc_chars=100)
    out = list(read_file(str(_bad_corpus(tmp_path)), cfg))
    docs = [r for r in out if r["kind"] == "doc"]
    rejects = [r for r in out if r["kind"] == "reject"]
    assert [r["reason"] for r in rejects] == [reason for _, reason in BAD_LINES]
    assert [r["line_no"] for r in rejects] == list(range(2, 2 + len(BAD_LINES)))
    assert len(out) == 2 + len(BAD_LINES)  # the blank line is not a record
    good, hashed = docs
    assert good["doc_id"] == "good-1" and good["text"] == "Hello\nworld"
    assert json.loads(good["metadata"]) == {"lang": "en"}
    assert good["text_hash"] == text_hash("Hello\nworld") and good["n_chars"] == 11
    assert hashed["doc_id"] == text_hash("no id here")  # no id field: the content hash is the id
    assert good["source"] == "mixed.jsonl.gz"
    for r in rejects:
        r["record"].encode("utf-8")  # every reject is storable


COMPRESS = {".jsonl": bytes, ".jsonl.gz": gzip.compress, ".JSONL.GZ": gzip.compress, ".NDJSON.Bz2": bz2.compress}


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.sampled_from(GOOD_LINES + BAD_LINES + MORE_BAD_LINES + [(b"", "blank"), (b" \r", "blank")]),
                      max_size=12),
       bom=st.booleans(), suffix=st.sampled_from(sorted(COMPRESS)))
def test_every_line_is_a_doc_or_a_reject_of_its_own(lines, bom, suffix):
    """Whatever the lines around it, each line is read: a doc or a reject with its line_no, and
    read = docs + rejects (a bad line never ends its file); a BOM and the suffix's case change nothing."""
    data = (codecs.BOM_UTF8 if bom else b"") + b"\n".join(line for line, _ in lines) + b"\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"lines{suffix}"
        path.write_bytes(COMPRESS[suffix](data))
        out = list(read_file(str(path), IngestConfig(max_doc_chars=100)))
    expected = [(n, reason) for n, (_, reason) in enumerate(lines, start=1) if reason != "blank"]
    assert [(r["line_no"], r.get("reason")) for r in out] == expected


def _read_split_by_split(path: Path, cfg: IngestConfig) -> tuple[list, list]:
    splits = plan_splits(str(path), cfg)
    return splits, [r for split in splits for r in read_file(str(path), cfg, split=split)]


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.tuples(st.sampled_from(GOOD_LINES + BAD_LINES + [(b"", None)]), st.integers(0, 400)),
                      max_size=60),
       final_newline=st.booleans(), bom=st.booleans(), split_kb=st.integers(1, 6), block=st.integers(1, 3000))
def test_splits_of_a_jsonl_file_read_what_the_whole_file_reads(lines, final_newline, bom, split_kb, block):
    """Split by split, a file yields exactly the records (line numbers included) of one whole read;
    the splits tile the file, each starting at the first line start at or after a multiple of
    split_mb, wherever the blocks fall."""
    # Padding inside a JSON string lets one line be long; blank lines, bad UTF-8 and a missing final newline stay.
    padded = [line.replace(b'"text": "', b'"text": "' + b"p" * pad, 1) for (line, _), pad in lines]
    data = (codecs.BOM_UTF8 if bom else b"") + b"\n".join(padded) + (b"\n" if final_newline else b"")
    cfg = IngestConfig(max_doc_chars=500, split_mb=split_kb / 1024)
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setattr(readers, "_BLOCK", block)
        path = Path(d) / "big.jsonl"
        path.write_bytes(data)
        splits, records = _read_split_by_split(path, cfg)
        assert records == list(read_file(str(path), cfg))
    if len(data) <= split_kb * 1024:
        assert splits == [WHOLE]
        return
    step = split_kb * 1024
    line_starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n")]
    firsts = {min([s for s in line_starts if s >= at], default=len(data)) for at in range(0, len(data), step)}
    assert [s.start for s in splits] == sorted(firsts - {len(data)})
    assert splits[-1].end == len(data) and all(a.end == b.start for a, b in zip(splits, splits[1:]))
    assert all(s.first_line == 1 + data[:s.start].count(b"\n") for s in splits)


def test_splits_of_a_parquet_file_are_runs_of_row_groups(tmp_path):
    rows = [{"id": f"r{i}", "text": f"row {i} " + "x" * (i % 50)} for i in range(500)]
    rows[123]["text"] = None  # a reject keeps its row number in any split
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=40)
    cfg = IngestConfig(split_mb=1 / 1024)
    splits, records = _read_split_by_split(tmp_path / "big.parquet", cfg)
    assert len(splits) > 2 and splits[0].start == 0 and splits[-1].end == 13  # 13 row groups
    assert all(a.end == b.start and b.first_line == 1 + 40 * b.start for a, b in zip(splits, splits[1:]))
    assert records == list(read_file(str(tmp_path / "big.parquet"), cfg))
    assert [r["line_no"] for r in records] == list(range(1, 501)) and records[123]["reason"] == "missing_text"


def test_a_split_never_reads_the_next_splits_first_line(tmp_path):
    import tracemalloc

    path = tmp_path / "dump.jsonl"
    path.write_bytes(b'{"id": "a", "text": "small"}\n' * 100 + b'{"id": "dump", "text": "' + b"x" * (32 << 20) + b'"}\n')
    splits = plan_splits(str(path), IngestConfig(split_mb=1 / 1024))
    tracemalloc.start()
    try:
        records = list(read_file(str(path), IngestConfig(split_mb=1 / 1024), split=splits[0]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records and all(r["doc_id"] == "a" for r in records)
    assert peak < 4 << 20  # the 32 MiB line of a later split was not read


def test_pieces_inside_one_long_line_are_empty_and_a_file_gone_while_planning_is_read_whole(tmp_path):
    path = tmp_path / "minified.jsonl"  # one record, no newline at all: a JSON array dumped on one line
    path.write_bytes(b'{"id": "all", "text": "' + b"w" * 20_000 + b'"}')
    cfg = IngestConfig(split_mb=1 / 1024)
    pieces = readers.plan_file(str(path), cfg)
    assert len(pieces) == 20 and all(readers.is_piece(p) for p in pieces)
    snapped = [readers.snap_piece(str(path), p) for p in pieces]
    # Only the first piece has a line start; the others read their own KiB, find none, and are empty.
    assert [n for _, n in snapped] == [0] * 20 and snapped[0][0][:2] == (0, path.stat().st_size)
    assert readers.number_pieces(snapped) == [snapped[0][0]._replace(first_line=1)]
    path.unlink()  # gone between planning a piece and snapping it: read whole, which records why
    assert readers.number_pieces([readers.snap_piece(str(path), p) for p in pieces]) == [WHOLE]


def test_splits_holding_lines_are_the_splits_whose_line_ranges_contain_them():
    splits = [Split(0, 10, 1), Split(10, 20, 5), Split(20, 30, 9)]
    assert readers.splits_holding(splits, []) == []
    assert readers.splits_holding(splits, [4, 1, 3]) == splits[:1]
    assert readers.splits_holding(splits, [5, 100]) == [splits[1], splits[2]]
    assert readers.splits_holding(splits, [0, 8]) == [splits[1]]  # line numbers start at 1
    assert readers.splits_holding([WHOLE], [7]) == [WHOLE]


def test_a_file_changed_since_planning_is_a_reject_per_split_not_lines_cut_apart(tmp_path):
    path = tmp_path / "grows.jsonl"
    body = b"".join(b'{"id": "%d", "text": "%s"}\n' % (i, b"z" * 100) for i in range(40))
    path.write_bytes(body)
    cfg = IngestConfig(split_mb=1 / 1024)
    splits = plan_splits(str(path), cfg)
    path.write_bytes(b'{"id": "new", "text": "shifts every line"}\n' + body)
    for split in splits:
        (r,) = read_file(str(path), cfg, split=split)
        assert (r["reason"], r["line_no"]) == ("unreadable_file", split.first_line)
        assert "changed since its splits were planned" in r["detail"]


def test_compressed_text_small_and_unreadable_files_are_read_whole(tmp_path):
    cfg = IngestConfig(split_mb=1 / 1024)
    body = b"".join(b'{"id": "%d", "text": "%s"}\n' % (i, b"y" * 100) for i in range(100))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "a.txt").write_bytes(body)
    (tmp_path / "small.jsonl").write_bytes(body[:500])
    (tmp_path / "broken.parquet").write_bytes(body)
    for name in ["a.jsonl.gz", "a.txt", "small.jsonl", "broken.parquet", "missing.jsonl"]:
        assert plan_splits(str(tmp_path / name), cfg) == [WHOLE], name
    (tmp_path / "a.jsonl").write_bytes(body)
    assert len(plan_splits(str(tmp_path / "a.jsonl"), cfg)) == 13  # 12,490 bytes: a split per KiB begun
    # A split that cannot be read (the file went away) is a reject at the line it starts at.
    split = plan_splits(str(tmp_path / "a.jsonl"), cfg)[3]
    (tmp_path / "a.jsonl").unlink()
    (r,) = read_file(str(tmp_path / "a.jsonl"), cfg, split=split)
    assert (r["reason"], r["line_no"]) == ("unreadable_file", split.first_line) and split.first_line > 1


def test_nesting_too_deep_is_a_reject_not_the_end_of_the_file(tmp_path):
    # json.loads and json.dumps give up at slightly different depths: try every depth around the limit.
    limit = sys.getrecursionlimit()
    lines = [b'{"id": "x", "text": "t", "m": ' + b"[" * d + b"]" * d + b"}" for d in range(limit // 2, limit + 10)]
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"\n".join([*lines, b'{"id": "last", "text": "after"}']) + b"\n")
    out = list(read_file(str(path), IngestConfig()))
    assert [r["line_no"] for r in out] == list(range(1, len(lines) + 2))
    assert {r.get("reason") for r in out[:-1]} <= {None, "malformed_json"} and out[-1]["doc_id"] == "last"


def test_bom_upper_case_suffix_and_id_types(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + b'{"id": "a", "text": "first"}\n{"id": 2, "text": "b"}\n')
    (tmp_path / "bom.txt").write_bytes(codecs.BOM_UTF8 + b"plain text")
    (tmp_path / "UP.JSONL.GZ").write_bytes(gzip.compress(b'{"id": "g", "text": "zipped"}\n'))
    assert [d["doc_id"] for d in read_file(str(tmp_path / "bom.jsonl"), IngestConfig())] == ["a", "2"]
    (t,) = read_file(str(tmp_path / "bom.txt"), IngestConfig())
    assert t["text"] == "plain text" and t["n_chars"] == 10
    (g,) = read_file(str(tmp_path / "UP.JSONL.GZ"), IngestConfig())
    assert g["doc_id"] == "g" and g["text"] == "zipped"


def test_parquet_binary_strings_and_nan(tmp_path):
    """BINARY columns (Parquet written without the UTF8 annotation) read as strings; NaN metadata as null."""
    binary = lambda *v: pa.array(v, pa.binary())  # noqa: E731
    pq.write_table(pa.table({"id": binary(b"doc-1", b"doc-\xff", b"doc-3"), "text": binary(b"hello", b"x", b"y"),
                             "src": binary(b"web", b"web", b"web"), "lang": binary(b"en", b"de", b"fr"),
                             "score": [float("nan"), 0.5, float("inf")]}), tmp_path / "bin.parquet")
    pq.write_table(pa.table({"id": [1.0], "text": ["float id"]}), tmp_path / "float.parquet")
    one, bad, three = read_file(str(tmp_path / "bin.parquet"), IngestConfig(source_field="src"))
    assert (one["doc_id"], one["source"], one["metadata"]) == ("doc-1", "web", '{"lang": "en", "score": null}')
    assert bad["reason"] == "invalid_utf8" and bad["line_no"] == 2 and r'"doc-\\xff"' in bad["record"]
    assert json.loads(three["metadata"], parse_constant=pytest.fail) == {"lang": "fr", "score": None}
    (f,) = read_file(str(tmp_path / "float.parquet"), IngestConfig())
    assert f["reason"] == "invalid_id" and f["detail"] == "float"


def test_bytes_that_are_not_utf8_cost_their_row_only_and_metadata_none(tmp_path):
    """A string column some writer filled with bytes that are not UTF-8: the row is an invalid_utf8
    reject, the rest of its batch and file are read. A bytes metadata column (an image, a digest)
    costs nothing: its value is kept with the bytes escaped."""
    texts = [f"doc {i}".encode() for i in range(3000)]
    texts[1500] = b"bad \xff"
    unchecked = pa.array(texts, pa.binary()).view(pa.string())  # typed string, not valid UTF-8
    pq.write_table(pa.table({"id": [str(i) for i in range(3000)], "text": unchecked}), tmp_path / "s.parquet",
                   row_group_size=1000)
    records = list(read_file(str(tmp_path / "s.parquet"), IngestConfig()))
    [bad] = [r for r in records if r["kind"] == "reject"]
    assert (bad["reason"], bad["line_no"], len(records)) == ("invalid_utf8", 1501, 3000)
    pq.write_table(pa.table({"id": ["p"], "text": ["a page"], "thumb": [b"\x89PNG\r\n"]}), tmp_path / "m.parquet")
    (doc,) = read_file(str(tmp_path / "m.parquet"), IngestConfig())
    assert doc["kind"] == "doc" and json.loads(doc["metadata"]) == {"thumb": "\\x89PNG\r\n"}


def test_the_documented_reasons_are_the_ones_produced():
    # duplicate_id comes from the ingest stage (tests/test_stages.py), unreadable_file from the test below.
    assert {reason for _, reason in BAD_LINES} | {"duplicate_id", "unreadable_file"} == set(REJECT_REASONS)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    listed = readme.split("**ingest** prints", 1)[1].split("with a reason:", 1)[1].split(". **distill**", 1)[0]
    assert set(re.findall(r"`([a-z0-9_]+)`", listed)) == set(REJECT_REASONS)


def test_parquet_and_text(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", None], "src": ["web", "web"]}), tmp_path / "p.parquet")
    (tmp_path / "t.txt").write_text("plain\r\ntext file")
    cfg = IngestConfig(source_field="src")
    p = list(read_file(str(tmp_path / "p.parquet"), cfg))
    assert [r["kind"] for r in p] == ["doc", "reject"] and p[0]["source"] == "web" and p[1]["reason"] == "missing_text"
    (t,) = read_file(str(tmp_path / "t.txt"), cfg)
    assert t["text"] == "plain\r\ntext file" and t["doc_id"] == text_hash(t["text"])


def test_too_large_rejects_keep_a_bounded_prefix_of_the_record(tmp_path):
    big = "x" * 5000
    # Characters, not bytes: a cut never leaves half of a multi-byte character.
    (tmp_path / "accents.txt").write_text("é" * 5000)
    (accents,) = read_file(str(tmp_path / "accents.txt"), IngestConfig(max_doc_chars=1000))
    assert accents["record"] == "é" * 1000
    pq.write_table(pa.table({"id": ["pq-big"], "text": [big], "lang": ["en"]}), tmp_path / "p.parquet")
    (tmp_path / "j.jsonl").write_text(json.dumps({"id": "j-big", "text": big}) + "\n")
    (tmp_path / "t.txt").write_text(big)
    cfg = IngestConfig(max_doc_chars=1000)
    for name, starts in [("p.parquet", '{"id": "pq-big", "text": "xxx'), ("j.jsonl", '{"id": "j-big", "text": "xxx'),
                         ("t.txt", "xxx")]:
        (r,) = read_file(str(tmp_path / name), cfg)
        assert r["reason"] == "too_large" and r["record"].startswith(starts) and len(r["record"]) == 1000, name


def test_keep_record_gives_docs_their_record_as_read(tmp_path):
    line = '{"text": "hello",  "id": "a", "n": 1}'
    (tmp_path / "j.jsonl").write_text(line + "\n")
    pq.write_table(pa.table({"id": ["b"], "text": ["world"]}), tmp_path / "p.parquet")
    assert [d["record"] for d in read_file(str(tmp_path / "j.jsonl"), IngestConfig(), keep_record=True)] == [line]
    (doc,) = read_file(str(tmp_path / "p.parquet"), IngestConfig(), keep_record=True)
    assert json.loads(doc["record"]) == {"id": "b", "text": "world"}
    assert "record" not in next(read_file(str(tmp_path / "j.jsonl"), IngestConfig()))


def test_unreadable_file_is_one_reject(tmp_path):
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    (r,) = read_file(str(broken), IngestConfig())
    assert r["reason"] == "unreadable_file" and r["line_no"] is None


def test_listing_and_format_detection(tmp_path):
    for d in ["d", "_temporary", ".git"]:
        (tmp_path / d).mkdir()
    for i, name in enumerate(["a.jsonl", "b.jsonl.gz", "_SUCCESS", ".hidden", "d/c.parquet", "_temporary/x.jsonl",
                              ".git/y.json"]):
        (tmp_path / name).write_bytes(b"x" * i)
    files = list_input_files([str(tmp_path)])
    assert [(f.rsplit("/", 1)[1], size) for f, size in files.items()] == [("a.jsonl", 0), ("b.jsonl.gz", 1),
                                                                          ("c.parquet", 4)]
    assert list_input_files([str(tmp_path / "d" / "c.parquet")]) == {str(tmp_path / "d" / "c.parquet"): 4}
    assert [detect_format(f) for f in files] == ["jsonl", "jsonl", "parquet"]
    with pytest.raises(ValueError, match="set ingest.format"):
        detect_format("data.csv")
    with pytest.raises(FileNotFoundError):
        list_input_files([str(tmp_path / "missing")])


@pytest.mark.parametrize("given, listed, name", [
    ("hdfs://nn:8020/data", "/data/a.jsonl", "hdfs://nn:8020/data/a.jsonl"),  # HDFS lists no namenode
    ("hdfs:///data", "/data/a.jsonl", "hdfs:///data/a.jsonl"),
    ("s3://bucket/data", "bucket/data/a.jsonl", "s3://bucket/data/a.jsonl"),  # object stores list bucket/key
    ("gs://bucket", "bucket/a.jsonl", "gs://bucket/a.jsonl"),
    ("s3://bucket/data", "s3://bucket/data/a.jsonl", "s3://bucket/data/a.jsonl"),
    # Azure lists container/key: the account stays in the name, or the file could not be opened again
    ("abfss://cont@acct.dfs.core.windows.net/dir", "cont/dir/a.jsonl", "abfss://cont@acct.dfs.core.windows.net/dir/a.jsonl"),
])
def test_remote_files_are_named_by_uris_that_open_them(given, listed, name):
    assert _remote_name(given, listed) == name


def test_require_id_rejects_records_without_one(tmp_path):
    path = tmp_path / "expert.jsonl"
    path.write_text('{"doc_id": "d1", "text": "a"}\n{"text": "no id"}\n{"doc_id": null, "text": "b"}\n'
                    '{"doc_id": "", "text": "c"}\n')
    cfg = IngestConfig(id_field="doc_id")
    got = [(r["kind"], r.get("doc_id"), r["reason"] if r["kind"] == "reject" else None)
           for r in read_file(str(path), cfg, require_id=True)]
    assert got == [("doc", "d1", None)] + [("reject", None, "missing_doc_id")] * 3
    assert [r["kind"] for r in read_file(str(path), cfg)] == ["doc"] * 4  # ingest: the text hash is the id


def test_local_files_have_one_spelling(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text("{}\n")
    (tmp_path / "current").symlink_to(data)
    (data / "link.jsonl").symlink_to(data / "a.jsonl")
    monkeypatch.chdir(tmp_path)
    real = str(data.resolve() / "a.jsonl")
    for spelling in [real, f"file://{real}", "data/a.jsonl", "current/a.jsonl", "./current/../data/a.jsonl"]:
        assert list_input_files([spelling]) == {real: 3}, spelling
    assert list_input_files([f"file://{tmp_path}/current"]) == {real: 3, str(data.resolve() / "link.jsonl"): 3}


@pytest.mark.parametrize("uri, fs_type, path", [
    ("s3a://bucket/raw/a.jsonl?region=us-east-1", "s3", "bucket/raw/a.jsonl"),  # Hadoop's spelling of S3
    ("S3N://bucket/raw?region=us-east-1", "s3", "bucket/raw"),
    ("file:///data/raw", "local", "/data/raw"),
    ("file:/data/raw", "local", "/data/raw"),
])
def test_resolve_takes_the_uris_spark_clusters_use(uri, fs_type, path):
    fs, where = resolve(uri)
    assert (fs.type_name, where) == (fs_type, path)


def test_resolve_refuses_a_scheme_it_cannot_read_rather_than_taking_it_for_a_local_name():
    with pytest.raises(pa.ArrowInvalid, match="dbfs"):
        resolve("dbfs:/mnt/raw")
    assert resolve("data:2024/raw")[1] == os.path.abspath("data:2024/raw")  # no slash after the colon: a name
    with pytest.raises(pa.ArrowInvalid, match="relative"):
        resolve("file:data")  # as the lake refuses it: a file URI is absolute
