"""Audit views over the lake tables, in Spark SQL (`refinex-spark sql` registers them).

`register_views` expects every table of `schemas.TABLES` to be a temp view named like the table
already (`jobs.sql.register` does that, at the requested versions), so the audit views follow
whatever snapshot the base views show.

    audit            one row per refined_docs row: raw and refined text, program, op outcomes,
                     status, deleted fraction, the document's source
    op_stats         ops by kind (the call name before "("), applied or why not, over refined_docs
    run_summary      one row per stage run: rows, docs, statuses, deleted-fraction quantiles,
                     expert tokens, models, fingerprints
    distill_summary  each document's current distill_samples, kept or dropped, by reason, expert
                     model and fingerprint
"""

from __future__ import annotations

from typing import Any

OP_OUTCOMES_SCHEMA = "array<struct<op:string,applied:boolean,reason:string,chunk:int>>"

# A distill sample's outcome: kept, a drop reason, or "error" (its message is on the row).
_REASON = ("CASE WHEN kept THEN 'kept' WHEN drop_reason LIKE 'error:%' THEN 'error' "
           "ELSE coalesce(drop_reason, 'unknown') END")

# raw_docs keeps one row per (doc_id, text_hash), and a refined row names the text it refined,
# so the join is exact; left, so a refined row whose raw row is missing still shows. raw_chars
# counts "\r\n" as one char, as refined_text and deleted_fraction do (programs see "\n" only).
_AUDIT = """
SELECT r.doc_id, d.source, d.text AS raw_text, r.refined_text, r.program, r.op_outcomes,
       r.status, r.error, r.deleted_fraction, length(replace(d.text, '\\r\\n', '\\n')) AS raw_chars,
       length(r.refined_text) AS refined_chars, r.n_chunks, r.n_fallback_chunks,
       r.model_id, r.prompt_version, r.fingerprint, r.text_hash, r.run_id, r.created_at
FROM refined_docs r
LEFT JOIN raw_docs d ON d.doc_id = r.doc_id AND d.text_hash = r.text_hash
"""

# Rejected entries keep the program line as written: a malformed one is "(unparsed)", whatever it starts with.
_OP_STATS = f"""
WITH ops AS (
  SELECT r.doc_id, o.op, o.applied, o.reason,
         regexp_extract(o.op, '^\\\\s*([A-Za-z_][A-Za-z0-9_]*)\\\\s*\\\\(', 1) AS name
  FROM refined_docs r
  LATERAL VIEW explode(from_json(r.op_outcomes, '{OP_OUTCOMES_SCHEMA}')) e AS o
  WHERE r.op_outcomes IS NOT NULL
)
SELECT CASE WHEN name = '' OR reason = 'malformed' THEN '(unparsed)' ELSE name END AS kind,
       applied,
       CASE WHEN applied THEN NULL ELSE reason END AS reason,
       count(*) AS ops,
       count(DISTINCT doc_id) AS docs
FROM ops
GROUP BY 1, 2, 3
"""

# One aggregate per stage table, in a common shape. Distill quantiles are over documents (each
# chunk row repeats its document's fraction); statuses of distill are per sample.
_RUN_SUMMARY = f"""
WITH refine_status AS (
  SELECT run_id, status, count(*) AS n FROM refined_docs GROUP BY run_id, status
), refine AS (
  SELECT run_id, 'refine' AS stage, min(created_at) AS started_at, max(created_at) AS finished_at,
         count(*) AS rows, count(DISTINCT doc_id) AS docs,
         percentile_approx(deleted_fraction, 0.5) AS deleted_fraction_p50,
         percentile_approx(deleted_fraction, 0.9) AS deleted_fraction_p90,
         max(deleted_fraction) AS deleted_fraction_max,
         CAST(NULL AS BIGINT) AS tokens,
         array_join(array_sort(collect_set(model_id)), ',') AS model,
         array_join(array_sort(collect_set(fingerprint)), ',') AS fingerprint
  FROM refined_docs GROUP BY run_id
), distill_status AS (
  SELECT run_id, {_REASON} AS status, count(*) AS n
  FROM distill_samples GROUP BY 1, 2
), distill_docs AS (
  SELECT run_id, doc_id, first(doc_deleted_fraction) AS deleted_fraction, min(created_at) AS started_at,
         max(created_at) AS finished_at, count(*) AS rows,
         collect_set(expert_model) AS models, collect_set(fingerprint) AS fingerprints
  FROM distill_samples GROUP BY run_id, doc_id
), distill AS (
  SELECT run_id, 'distill' AS stage, min(started_at) AS started_at, max(finished_at) AS finished_at,
         sum(rows) AS rows, count(*) AS docs,
         percentile_approx(deleted_fraction, 0.5) AS deleted_fraction_p50,
         percentile_approx(deleted_fraction, 0.9) AS deleted_fraction_p90,
         max(deleted_fraction) AS deleted_fraction_max,
         CAST(NULL AS BIGINT) AS tokens,
         array_join(array_sort(array_distinct(flatten(collect_list(models)))), ',') AS model,
         array_join(array_sort(array_distinct(flatten(collect_list(fingerprints)))), ',') AS fingerprint
  FROM distill_docs GROUP BY run_id
), expert_status AS (
  SELECT run_id, status, count(*) AS n FROM expert_outputs GROUP BY run_id, status
), expert AS (
  SELECT run_id, 'expert' AS stage, min(created_at) AS started_at, max(created_at) AS finished_at,
         count(*) AS rows, count(DISTINCT doc_id) AS docs,
         CAST(NULL AS DOUBLE) AS deleted_fraction_p50, CAST(NULL AS DOUBLE) AS deleted_fraction_p90,
         CAST(NULL AS DOUBLE) AS deleted_fraction_max,
         sum(tokens) AS tokens,
         array_join(array_sort(collect_set(expert_model)), ',') AS model,
         CAST(NULL AS STRING) AS fingerprint
  FROM expert_outputs GROUP BY run_id
), ingest AS (
  SELECT run_id, 'ingest' AS stage, min(created_at) AS started_at, max(created_at) AS finished_at,
         count(*) AS rows, count(DISTINCT doc_id) AS docs,
         CAST(NULL AS DOUBLE) AS deleted_fraction_p50, CAST(NULL AS DOUBLE) AS deleted_fraction_p90,
         CAST(NULL AS DOUBLE) AS deleted_fraction_max,
         CAST(NULL AS BIGINT) AS tokens, CAST(NULL AS STRING) AS model, CAST(NULL AS STRING) AS fingerprint
  FROM raw_docs GROUP BY run_id
), statuses AS (
  SELECT run_id, stage, map_from_entries(array_sort(collect_list(struct(status, n)))) AS statuses
  FROM (SELECT run_id, 'refine' AS stage, status, n FROM refine_status
        UNION ALL SELECT run_id, 'distill', status, n FROM distill_status
        UNION ALL SELECT run_id, 'expert', status, n FROM expert_status)
  GROUP BY run_id, stage
)
SELECT a.run_id, a.stage, a.started_at, a.finished_at, a.rows, a.docs, s.statuses,
       a.deleted_fraction_p50, a.deleted_fraction_p90, a.deleted_fraction_max, a.tokens, a.model, a.fingerprint
FROM (SELECT * FROM refine UNION ALL SELECT * FROM distill UNION ALL SELECT * FROM expert
      UNION ALL SELECT * FROM ingest) a
LEFT JOIN statuses s ON s.run_id = a.run_id AND s.stage = a.stage
"""

# Of each document's current samples (its newest distillation: a newer expert output distils it
# again, and the older samples stay, superseded, as jobs/distill.py's `current` says). The doc_*
# averages are over documents: every chunk row repeats its document's value, and an average over
# rows would weigh a document by its number of chunks.
_DISTILL_SUMMARY = f"""
WITH current AS (
  SELECT * FROM (SELECT *, max(created_at) OVER (PARTITION BY doc_id, fingerprint) AS _newest
                 FROM distill_samples)
  WHERE created_at = _newest
), docs AS (
  SELECT fingerprint, expert_model, kept, {_REASON} AS reason, doc_id, count(*) AS samples,
         first(doc_fidelity) AS fidelity, first(doc_deleted_fraction) AS deleted_fraction,
         first(doc_illegal_fraction) AS illegal_fraction
  FROM current
  GROUP BY fingerprint, expert_model, kept, 4, doc_id
)
SELECT fingerprint, expert_model, kept, reason, sum(samples) AS samples, count(*) AS docs,
       avg(fidelity) AS avg_doc_fidelity, avg(deleted_fraction) AS avg_doc_deleted_fraction,
       avg(illegal_fraction) AS avg_doc_illegal_fraction
FROM docs
GROUP BY fingerprint, expert_model, kept, reason
"""

VIEWS: dict[str, str] = {
    "audit": _AUDIT,
    "op_stats": _OP_STATS,
    "run_summary": _RUN_SUMMARY,
    "distill_summary": _DISTILL_SUMMARY,
}


def register_views(spark: Any) -> list[str]:
    """Define every audit view as a temp view over the base table views; returns their names."""
    for name, query in VIEWS.items():
        spark.sql(f"CREATE OR REPLACE TEMP VIEW {name} AS {query}")
    return list(VIEWS)
