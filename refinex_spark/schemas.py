"""Every lake table's schema, declared once; the Arrow and Spark schemas are both derived from it.

Timestamps are UTC instants (Arrow `timestamp[us, tz=UTC]`, Spark `TimestampType`), never
timestamp_ntz, so the tables stay readable by delta-spark and delta-rs alike. Column docs become
field comments in both engines' table schemas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
from pyspark.sql import types as T

# The type vocabulary of the lake: one name, one Arrow type, one Spark type.
_TYPES: dict[str, tuple[pa.DataType, T.DataType]] = {
    "string": (pa.string(), T.StringType()),
    "long": (pa.int64(), T.LongType()),
    "int": (pa.int32(), T.IntegerType()),
    "double": (pa.float64(), T.DoubleType()),
    "bool": (pa.bool_(), T.BooleanType()),
    "timestamp": (pa.timestamp("us", tz="UTC"), T.TimestampType()),
}
TYPE_NAMES = tuple(_TYPES)


class Column(NamedTuple):
    name: str
    type: str  # one of TYPE_NAMES
    nullable: bool
    doc: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    fields: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        names = [c.name for c in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        unknown = [c.type for c in self.fields if c.type not in _TYPES]
        if unknown:
            raise ValueError(f"{self.name}: unknown column types {unknown} (known: {', '.join(TYPE_NAMES)})")
        missing = [p for p in self.partition_by if p not in names]
        if missing:
            raise ValueError(f"{self.name}: partition columns {missing} are not columns")
        for required, typ in (("run_id", "string"), ("created_at", "timestamp")):
            if self.column(required).type != typ:
                raise ValueError(f"{self.name}: {required} must be a {typ}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.fields]

    def column(self, name: str) -> Column:
        for c in self.fields:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, _TYPES[c.type][0], nullable=c.nullable, metadata={"comment": c.doc})
                          for c in self.fields])

    def spark_schema(self, columns: Sequence[str] | None = None) -> T.StructType:
        """The table's Spark schema, or just `columns` of it in that order (what a stage computes)."""
        fields = self.fields if columns is None else [self.column(n) for n in columns]
        return T.StructType([T.StructField(c.name, _TYPES[c.type][1], nullable=c.nullable,
                                           metadata={"comment": c.doc}) for c in fields])


def _table(name: str, doc: str, *columns: tuple[str, str, bool, str],
           added: tuple[tuple[str, str, bool, str], ...] = ()) -> TableSpec:
    """`added`: nullable columns declared after the table's first release. They come last, after the
    lineage columns, because that is where Delta adds a column to an existing table: a lake written
    before them gains them in place on its next append (`lake`), its older rows reading null."""
    lineage = (("run_id", "string", False, "the run that wrote the row"),
               ("created_at", "timestamp", False, "when the row was computed (UTC)"))
    if any(not nullable for _, _, nullable, _ in added):
        raise ValueError(f"{name}: an added column must be nullable (the rows written before it have none)")
    return TableSpec(name, tuple(Column(*c) for c in (*columns, *lineage, *added)), doc=doc)


TABLES: dict[str, TableSpec] = {t.name: t for t in (
    _table(
        "raw_docs", "Input documents as ingested; one row per doc_id.",
        ("doc_id", "string", False, "stable id: the input's id field, or sha256 of the text"),
        ("text", "string", False, "raw document text"),
        ("source", "string", False, "input source (source field or file name)"),
        ("metadata", "string", True, "other input fields as a JSON object"),
        ("text_hash", "string", False, "sha256 hex of text"),
        ("n_chars", "long", False, "len(text)"),
    ),
    _table(
        "rejects", "Input rows a stage could not use, with the reason; nothing is dropped silently.",
        ("stage", "string", False, "stage that rejected the record"),
        ("reason", "string", False, "machine-readable reason"),
        ("source_file", "string", True, "file the record came from"),
        ("line_no", "long", True, "1-based line or row number in source_file, if known"),
        ("record", "string", True, "the offending record, cut to 65,536 characters"),
        ("detail", "string", True, "human-readable detail"),
    ),
    _table(
        "expert_outputs", "End-to-end cleanings of raw documents by the expert model.",
        ("doc_id", "string", False, "raw_docs.doc_id"),
        ("expert_model", "string", False, "model that produced the output"),
        ("prompt_version", "string", False, "expert prompt version"),
        ("text", "string", True, "cleaned text; null when status is error"),
        ("status", "string", False, "ok | error"),
        ("error", "string", True, "error message when status is error"),
        ("latency_s", "double", True, "request latency in seconds"),
        ("tokens", "long", True, "completion tokens, when reported"),
        ("raw_text_hash", "string", False, "raw_docs.text_hash of the text the expert saw"),
    ),
    _table(
        "distill_samples", "Chunk-level training samples: numbered chunk prompt and its deletion program.",
        ("doc_id", "string", False, "raw_docs.doc_id"),
        ("fingerprint", "string", False, "hash of the settings that produced the sample"),
        ("chunk_index", "int", False, "chunk position in the document (-1: document-level error row)"),
        ("start_line", "int", False, "first global line of the chunk"),
        ("end_line", "int", False, "last global line of the chunk (inclusive)"),
        ("prompt", "string", False, "numbered chunk text the model reads"),
        ("program", "string", False, "deletion program for the chunk"),
        ("n_ops", "int", False, "number of ops in program"),
        ("kept", "bool", False, "whether the sample is used for training"),
        ("drop_reason", "string", True, "why the sample is not kept"),
        ("doc_fidelity", "double", True, "F1 of the executed program vs the expert text (document)"),
        ("doc_deleted_fraction", "double", True, "share of raw characters the program deletes (document)"),
        ("doc_illegal_fraction", "double", True, "share of expert edits that were not deletions (document)"),
        ("expert_model", "string", False, "expert_outputs.expert_model the sample was distilled from"),
        added=(("expert_created_at", "timestamp", True,
                "expert_outputs.created_at of the output the sample was distilled from (null: written before "
                "this column was)"),),
    ),
    _table(
        "refined_docs", "One row per refined raw document: the program, its outcome and the refined text.",
        ("doc_id", "string", False, "raw_docs.doc_id"),
        ("text_hash", "string", False, "raw_docs.text_hash of the refined input"),
        ("refined_text", "string", True, "refined text; null when status is error"),
        ("program", "string", True, "whole-document program as generated"),
        ("op_outcomes", "string", True, "JSON list of op outcomes: op, applied, reason (why not), chunk (its chunk's position)"),
        ("status", "string", False, "ok | kept | fallback | error (| dropped in the ProX dialect)"),
        ("error", "string", True, "error message when status is error"),
        ("deleted_fraction", "double", True, "share of raw characters deleted"),
        ("n_chunks", "int", True, "chunks the document was split into"),
        ("n_fallback_chunks", "int", True, "chunks kept unchanged because their program was rejected"),
        ("model_id", "string", False, "refine model path or id"),
        ("prompt_version", "string", False, "refine prompt version"),
        ("fingerprint", "string", False, "hash of the settings that produced the row"),
    ),
)}
