"""Input files -> document records or rejects, one file at a time (pure Python, no Spark).

A file is read with pyarrow's filesystem layer, so local paths, `file://`, `s3://`, `hdfs://`
and `gs://` work the same, and `.gz`/`.bz2`/`.zst`/`.lz4` are decompressed by extension (any case). Reading
bytes ourselves (instead of Spark's text source, which silently replaces bad bytes) is what
lets invalid UTF-8 become a reject with a reason instead of corrupted text.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
import os
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .config import IngestConfig

MAX_RECORD_CHARS = 65_536  # the offending record is kept in `rejects` up to this size
PREFIX_CHARS = 1000  # of a too_large record, and of a text file, only this long a prefix is kept

# Every reason a reject of ingest can carry (README lists them; tests keep the two in step).
REJECT_REASONS = (
    "malformed_json",
    "not_an_object",
    "missing_text",
    "text_not_string",
    "empty_text",
    "invalid_utf8",
    "invalid_id",
    "too_large",
    "duplicate_id",
    "unreadable_file",
)

_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text", ".text": "text"}
# pyarrow's compression="detect" is case-sensitive (X.JSONL.GZ would be read as raw gzip bytes): the codec comes
# from the lower-cased suffix, like the format does.
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


def format_of(path: str, configured: str = "auto") -> str | None:
    """The configured format, else the one the file's extension names (None: it names none)."""
    if configured != "auto":
        return configured
    name = path.lower()
    for ext in _COMPRESSIONS:
        name = name.removesuffix(ext)
    return next((fmt for ext, fmt in _FORMATS.items() if name.endswith(ext)), None)


def detect_format(path: str, configured: str = "auto") -> str:
    fmt = format_of(path, configured)
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path!r} from its extension; set ingest.format")
    return fmt


def _compression(path: str) -> str | None:
    name = path.lower()
    return next((codec for ext, codec in _COMPRESSIONS.items() if name.endswith(ext)), None)


def _open(fs: pafs.FileSystem, path: str):
    return fs.open_input_stream(path, compression=_compression(path))


class Split(NamedTuple):
    """The part of one file that one task reads: bytes [start, end) of a jsonl file, whole lines, or row
    groups [start, end) of a parquet file; first_line is the line (row) number of its first record (0 in
    a jsonl piece, not yet at line ends: see plan_file). size and mtime_ns (-1: unknown) are the file's
    when planned: a file changed since is not read."""

    start: int
    end: int
    first_line: int
    size: int = -1
    mtime_ns: int = -1


WHOLE = Split(0, -1, 1)  # the whole file, in one pass
_BLOCK = 8 << 20  # a jsonl piece's newlines are counted this many bytes at a time
_BUFFER = 1 << 20  # bytes per read: on an object store every read is a request


def splittable(source_file: str, cfg: IngestConfig, size: int | None = None) -> bool:
    """Whether plan_splits may split the file: uncompressed jsonl or parquet (a stream decompresses from the
    start) bigger than a split (`size` in bytes; None: not known yet)."""
    return (format_of(source_file, cfg.format) in ("jsonl", "parquet") and _compression(source_file) is None
            and (size is None or size > _split_bytes(cfg)))


def _split_bytes(cfg: IngestConfig) -> int:
    return int(cfg.split_mb * (1 << 20))


def plan_splits(source_file: str, cfg: IngestConfig) -> list[Split]:
    """The splits of a file, each about `cfg.split_mb`: uncompressed jsonl at line ends, parquet at row
    groups. A compressed or text file, one no bigger than a split, or one that cannot be read is WHOLE
    (read_file then records why it is unreadable).

    In one process: plan_file, snap_piece on each jsonl piece, number_pieces. The ingest job runs the
    same three steps with a Spark task per file, then per piece, so no task reads a whole big file.
    """
    planned = plan_file(source_file, cfg)
    if not any(is_piece(s) for s in planned):
        return planned
    return number_pieces([snap_piece(source_file, piece) for piece in planned])


def plan_file(source_file: str, cfg: IngestConfig) -> list[Split]:
    """plan_splits' first step, from the file's metadata: WHOLE, a parquet file's splits, or a big jsonl
    file's pieces (is_piece: byte ranges of split_mb each, not yet moved to line ends or numbered)."""
    split_bytes = _split_bytes(cfg)
    try:
        if not splittable(source_file, cfg):
            return [WHOLE]
        fs, path = resolve(source_file)
        info = fs.get_file_info(path)
        if not splittable(source_file, cfg, info.size):
            return [WHOLE]
        if detect_format(source_file, cfg.format) == "jsonl":
            return [Split(at, min(at + split_bytes, info.size), 0, *_stamp(info))
                    for at in range(0, info.size, split_bytes)]
        return [Split(*bounds, *_stamp(info)) for bounds in _parquet_splits(fs, path, split_bytes)]
    except Exception:  # noqa: BLE001 - the read reports it, as a reject
        return [WHOLE]


def is_piece(split: Split) -> bool:
    return split.first_line == 0  # line numbers start at 1


def snap_piece(source_file: str, piece: Split) -> tuple[Split, int]:
    """A jsonl piece moved to line ends (each bound to the first line start at or after it), and the
    newlines in it; (piece, -1) when the file cannot be read.

    Every piece moves its bounds by the same rule, so the snapped pieces of a file tile it without
    knowing each other. A piece with no line start of its own is empty, found by reading only its own
    bytes; one with a line start reads from it through the line over its end. So a file is read at
    most about twice, however long its lines.
    """
    try:
        fs, path = resolve(source_file)
        with fs.open_input_file(path) as f:
            start = 0
            if piece.start:
                found = _next_line_start(f, piece.start - 1, piece.start, stop=piece.end - 1)
                if found is None:
                    return piece._replace(start=piece.end), 0
                start = found[0]
            end, newlines = _next_line_start(f, start, piece.end)
        return piece._replace(start=start, end=end), newlines
    except Exception:  # noqa: BLE001 - number_pieces reads the file whole, and the read reports it
        return piece, -1


def _next_line_start(f, pos: int, at: int, stop: int | None = None) -> tuple[int, int] | None:
    """The first line start at or after `at` (the end of the file if there is none), and the newlines
    from `pos` (< at) to it; None when it is past `stop` (read no further)."""
    f.seek(pos)
    newlines = 0
    while block := f.read(_BLOCK if stop is None else min(_BLOCK, stop - pos)):
        if (nl := block.find(b"\n", max(at - 1 - pos, 0))) >= 0:
            return pos + nl + 1, newlines + block.count(b"\n", 0, nl + 1)
        newlines += block.count(b"\n")
        pos += len(block)
    return None if stop is not None else (pos, newlines)


def number_pieces(snapped: Sequence[tuple[Split, int]]) -> list[Split]:
    """One file's snapped pieces, in order, as splits numbered from their newline counts (the empty
    ones left out); [WHOLE] if a piece could not be read."""
    if any(newlines < 0 for _, newlines in snapped):
        return [WHOLE]
    splits, first_line = [], 1
    for piece, newlines in snapped:
        if piece.start < piece.end:
            splits.append(piece._replace(first_line=first_line))
        first_line += newlines
    return splits


def splits_holding(splits: Sequence[Split], lines: Iterable[int]) -> list[Split]:
    """Those of one file's splits (as planned, in order) that hold any of the given line numbers."""
    firsts = [split.first_line for split in splits]
    return [splits[i] for i in sorted({bisect_right(firsts, n) - 1 for n in lines} - {-1})]


def _parquet_splits(fs: pafs.FileSystem, path: str, split_bytes: int) -> list[tuple[int, int, int]]:
    """(first row group, end row group, first row) of each split."""
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    splits = []
    start, first_row, row, size = 0, 1, 1, 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        if i > start and size >= split_bytes:
            splits.append((start, i, first_row))
            start, first_row, size = i, row, 0
        size += sum(group.column(j).total_compressed_size for j in range(group.num_columns))
        row += group.num_rows
    return splits + [(start, meta.num_row_groups, first_row)]


def _stamp(info: pafs.FileInfo) -> tuple[int, int]:
    """(size, mtime_ns) of a file as a Split records them (-1: the filesystem gives no mtime)."""
    return info.size, info.mtime_ns if info.mtime_ns is not None else -1


def _check_unchanged(fs: pafs.FileSystem, path: str, split: Split, source_file: str) -> None:
    """A split's offsets hold only for the file as planned: in one rewritten since, they cut lines apart."""
    if _stamp(fs.get_file_info(path)) != (split.size, split.mtime_ns):
        raise OSError(f"{source_file} changed since its splits were planned: ingest it again")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# A storage URI's scheme: 2+ characters ("C:" is a drive) followed by a slash, as in dbfs:/ or s3://, or
# "file:" whatever follows. Anything else with a colon (data:2024/raw) is a relative path.
URI_SCHEME = re.compile(r"^(file|[A-Za-z][A-Za-z0-9+.-]+(?=:/)):", re.IGNORECASE)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of a local path or storage URI, and the path on it. Hadoop's S3 schemes
    (s3a://, s3n://, as Spark clusters spell S3) are pyarrow's s3://."""
    uri = URI_SCHEME.match(path)
    if uri:
        hadoop_s3 = uri.group(1).lower() in ("s3a", "s3n")
        return pafs.FileSystem.from_uri(f"s3{path[len(uri.group(1)):]}" if hadoop_s3 else path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _local_name(path: str) -> str:
    """One spelling per local file (`file:///x/a`, `/x/a`, `a` from /x, through a symlinked directory), so the
    rejects of a file re-ingested under another spelling match the first ones. The file's own name is kept, not
    a symlink's target: the format and `source` come from it, and links such as Hugging Face cache snapshots
    point at blobs with no extension."""
    head, name = os.path.split(path)
    return os.path.join(os.path.realpath(head), name)


def list_input_files(paths: list[str]) -> dict[str, int]:
    """Files under the given files/directories, sorted, with their sizes in bytes; hidden files and
    `_SUCCESS`-style markers skipped.

    Local files come back as plain absolute paths (see _local_name); remote URIs (s3://, hdfs://) as given.
    """
    found: dict[str, int] = {}
    for p in paths:
        fs, root = resolve(p)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input path does not exist: {p}")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(root, recursive=True)
            # Hidden and underscore names (.git, _SUCCESS, _temporary/) are never data, at any depth.
            infos = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File
                     and not any(part.startswith((".", "_")) for part in os.path.relpath(i.path, root).split(os.sep))]
        else:
            infos = [info]
        local = isinstance(fs, pafs.LocalFileSystem)
        found.update(((_local_name(i.path) if local else _remote_name(p, i.path)), i.size) for i in infos)
    return dict(sorted(found.items()))


def _remote_name(given: str, listed: str) -> str:
    """A file pyarrow listed under the URI `given`, as a URI again. Object stores list `bucket/key`;
    Azure lists `container/key` of `abfss://container@account.dfs.core.windows.net/`, whose account
    the URI keeps; HDFS lists `/path`, without the namenode, which the URI keeps (`hdfs://nn:8020/path`)."""
    if "://" in listed:
        return listed
    parts = urlsplit(given)
    if listed.startswith("/"):
        return f"{parts.scheme}://{parts.netloc}{listed}"
    bucket, _, key = listed.partition("/")
    return f"{parts.scheme}://{parts.netloc}/{key}" if parts.netloc.split("@")[0] == bucket else f"{parts.scheme}://{listed}"


def _record_text(record: Any) -> str:
    """A record as `rejects.record` keeps it: a line as read, a parquet row as JSON; valid UTF-8, cut to size."""
    if isinstance(record, bytes):
        record = record.decode("utf-8", errors="backslashreplace")
    elif not isinstance(record, str):
        record = json.dumps(record, ensure_ascii=False, default=str)
    return record.encode("utf-8", errors="backslashreplace").decode("utf-8")[:MAX_RECORD_CHARS]


def _reject(source_file: str, line_no: int | None, reason: str, record: Any, detail: str = "") -> dict:
    return {"kind": "reject", "reason": reason, "source_file": source_file, "line_no": line_no,
            "record": _record_text(record), "detail": detail}


def _head(raw: str | bytes) -> str:
    """The first PREFIX_CHARS characters (bytes are decoded first: a cut never splits a character)."""
    return (raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw)[:PREFIX_CHARS]


def _prefix(raw: Any, text_field: str, text: str) -> str:
    """The first PREFIX_CHARS of a record: of its line (jsonl), or of the row with its text cut (parquet)."""
    if isinstance(raw, (str, bytes)):
        return _head(raw)
    return json.dumps({**raw, text_field: text[:PREFIX_CHARS]}, ensure_ascii=False, default=str)[:PREFIX_CHARS]


def _no_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which JSON has not: metadata holding one could not be parsed back
    # (Spark's get_json_object reads none of it), and a NaN id would become doc_id "nan".
    raise ValueError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999: float() gives inf, with the same problems as Infinity
        raise ValueError(f"{literal[:50]} is out of a double's range")
    return value


_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)  # one decoder, not one per line


def _from_parquet(value: Any, errors: str = "strict") -> Any:
    """A Parquet value with its BINARY strings (written without the UTF8 annotation) decoded, at any depth, so
    that ids, sources and metadata are `doc-1`, not `b'doc-1'`; UnicodeDecodeError where they are not UTF-8."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors)
    if isinstance(value, dict):
        return {k: _from_parquet(v, errors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_from_parquet(v, errors) for v in value]
    return value


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _metadata_json(metadata: dict) -> str:
    """Strict JSON, which Spark's get_json_object can read: NaN and infinite floats (Parquet has them) as null.
    Only a record that holds one is walked (in Python, which a deep nesting would exhaust the stack of)."""
    dump = lambda m: json.dumps(m, ensure_ascii=False, sort_keys=True, default=str, allow_nan=False)  # noqa: E731
    try:
        return dump(metadata)
    except ValueError:
        return dump(_finite_or_null(metadata))


def _is_utf8_safe(value: Any) -> bool:
    """JSON may carry lone surrogates ("\\ud800") that Arrow cannot encode: treat them as bad UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _document(obj: Any, source_file: str, line_no: int, raw: Any, cfg: IngestConfig, require_id: bool,
              keep_record: bool = False) -> dict:
    """A `doc` or a `reject` dict; keep_record: a doc carries its raw record too, as a reject would."""
    if not isinstance(obj, dict):
        return _reject(source_file, line_no, "not_an_object", raw)
    given_id = obj.get(cfg.id_field) if cfg.id_field else None
    if require_id and given_id in (None, ""):
        return _reject(source_file, line_no, "missing_doc_id", raw, f"no field {cfg.id_field!r}")
    # str() of anything else is a Python repr ("True", "1.0", "{'k': 1}"), not an id the input means.
    if given_id not in (None, "") and (isinstance(given_id, bool) or not isinstance(given_id, (str, int))):
        return _reject(source_file, line_no, "invalid_id", raw, type(given_id).__name__)
    if cfg.text_field not in obj or obj[cfg.text_field] is None:
        return _reject(source_file, line_no, "missing_text", raw, f"no field {cfg.text_field!r}")
    text = obj[cfg.text_field]
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            return _reject(source_file, line_no, "invalid_utf8", raw, str(e))
        obj = {**obj, cfg.text_field: text}
    if not isinstance(text, str):
        return _reject(source_file, line_no, "text_not_string", raw, type(text).__name__)
    if not _is_utf8_safe(obj):
        return _reject(source_file, line_no, "invalid_utf8", raw, "lone surrogate")
    if not text.strip():
        return _reject(source_file, line_no, "empty_text", raw)
    if len(text) > cfg.max_doc_chars:
        return _reject(source_file, line_no, "too_large", _prefix(raw, cfg.text_field, text),
                       f"{len(text)} chars > ingest.max_doc_chars={cfg.max_doc_chars}")
    digest = text_hash(text)
    doc_id = str(given_id) if given_id not in (None, "") else digest
    source = obj.get(cfg.source_field) if cfg.source_field else None
    reserved = {cfg.text_field, cfg.id_field, cfg.source_field}
    metadata = {k: v for k, v in obj.items() if k not in reserved}
    doc = {"kind": "doc", "doc_id": doc_id, "text": text,
           "source": str(source) if source is not None else os.path.basename(source_file),
           "metadata": _metadata_json(metadata),
           "text_hash": digest, "n_chars": len(text), "source_file": source_file, "line_no": line_no}
    if keep_record:
        doc["record"] = _record_text(raw)
    return doc


def _record(obj: Any, source_file: str, line_no: int, raw: Any, cfg: IngestConfig, require_id: bool,
            keep_record: bool) -> dict:
    """_document, with any failure on this one record (json.dumps of a nesting deeper than the recursion limit)
    its reject: the lines after it are still read, instead of the file ending in an `unreadable_file`."""
    try:
        return _document(obj, source_file, line_no, raw, cfg, require_id, keep_record)
    except (ValueError, RecursionError) as e:
        return _reject(source_file, line_no, "malformed_json", raw if isinstance(raw, (str, bytes)) else "",
                       f"{type(e).__name__}: {e}")


def _lines(fs: pafs.FileSystem, path: str, split: Split) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of every line of a split; of the whole file decompressed by its extension."""
    if split.end < 0:
        with _open(fs, path) as stream:
            yield from enumerate(io.BufferedReader(stream, buffer_size=_BUFFER), start=1)
        return
    with fs.open_input_file(path) as f:
        f.seek(split.start)
        reader, left, line_no = io.BufferedReader(f, buffer_size=_BUFFER), split.end - split.start, split.first_line
        while left > 0 and (line := reader.readline()):  # the next split's first line is never read
            left -= len(line)
            yield line_no, line
            line_no += 1


def _jsonl(fs: pafs.FileSystem, path: str, split: Split, source_file: str, cfg: IngestConfig, require_id: bool,
           keep_record: bool) -> Iterator[dict]:
    for line_no, raw in _lines(fs, path, split):
        if line_no == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # a BOM (Windows tools write one) is no part of the record
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            yield _reject(source_file, line_no, "invalid_utf8", raw, str(e))
            continue
        try:
            obj = _JSON.decode(line)
        except (ValueError, RecursionError) as e:  # ValueError: also int() of > 4300 digits, NaN, 1e999
            yield _reject(source_file, line_no, "malformed_json", line, str(e))
            continue
        yield _record(obj, source_file, line_no, line, cfg, require_id, keep_record)


def _parquet(fs: pafs.FileSystem, path: str, split: Split, source_file: str, cfg: IngestConfig,
             require_id: bool, keep_record: bool) -> Iterator[dict]:
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        groups = None if split.end < 0 else range(split.start, split.end)
        row = split.first_line
        # The id, text and source must be text; other columns may hold bytes (an image, a digest),
        # kept with what is not UTF-8 escaped rather than costing the document.
        strict = {cfg.text_field, cfg.id_field, cfg.source_field}
        for batch in parquet.iter_batches(batch_size=1024, row_groups=groups):
            try:
                rows = batch.to_pylist()
            except (UnicodeDecodeError, pa.ArrowException):  # a string column holding bytes that are not UTF-8:
                rows = _as_binary(batch).to_pylist()  # each row decoded below, a bad one its own reject
            for obj in rows:
                try:
                    plain = {k: _from_parquet(v, "strict" if k in strict else "backslashreplace") for k, v in obj.items()}
                except UnicodeDecodeError as e:
                    yield _reject(source_file, row, "invalid_utf8", _from_parquet(obj, "backslashreplace"), str(e))
                else:
                    yield _record(plain, source_file, row, plain, cfg, require_id, keep_record)
                row += 1


def _as_binary(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its string columns as bytes, which convert to Python whatever they hold."""
    binary = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary()}
    schema = pa.schema([f.with_type(binary.get(f.type, f.type)) for f in batch.schema])
    return batch.cast(schema)


def _text(fs: pafs.FileSystem, path: str, split: Split, source_file: str, cfg: IngestConfig, require_id: bool,
          keep_record: bool) -> Iterator[dict]:
    with _open(fs, path) as stream:  # never split (plan_splits)
        data = stream.read().removeprefix(codecs.BOM_UTF8)  # utf-8-sig: a leading BOM is no part of the text
    yield _record({cfg.text_field: data}, source_file, 1, _head(data), cfg, require_id, keep_record)


_READERS = {"jsonl": _jsonl, "parquet": _parquet, "text": _text}


def read_file(source_file: str, cfg: IngestConfig, *, split: Split = WHOLE, require_id: bool = False,
              keep_record: bool = False) -> Iterator[dict]:
    """Every record of one file (of one of its plan_splits) as a `doc` or a `reject` dict; an unreadable
    file is one reject.

    require_id (expert import: an output must name its document): a record without `cfg.id_field` is a
    `missing_doc_id` reject instead of getting its text's hash as id. keep_record: docs carry their raw
    record in `record` (as rejects do), for a stage that rejects some of them later (duplicate ids).
    """
    try:
        fmt = detect_format(source_file, cfg.format)
        fs, path = resolve(source_file)
        if split.end >= 0:
            _check_unchanged(fs, path, split, source_file)
        yield from _READERS[fmt](fs, path, split, source_file, cfg, require_id, keep_record)
    except Exception as e:  # noqa: BLE001 - a broken file must not fail the job; it is recorded
        # A split's failure is a reject of its own: at the line (row) it starts at, which keys it apart.
        line_no = None if split.end < 0 else split.first_line
        yield _reject(source_file, line_no, "unreadable_file", "", f"{type(e).__name__}: {e}")
