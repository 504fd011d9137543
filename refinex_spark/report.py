"""The audit report: figures from small aggregate tables, as one self-contained HTML file and a JSON.

Pure pandas + matplotlib (no Spark): `jobs/report.py` computes the aggregates with Spark SQL over
the lake and hands them over as a `ReportInput`, so everything here is testable with plain
frames. Figures are drawn on `matplotlib.figure.Figure` objects, which render with the Agg
canvas without touching pyplot's global backend (so importing this in a notebook leaves its
inline plotting alone). The HTML embeds each figure as a base64 PNG and loads nothing from
anywhere; the JSON carries the numbers behind every figure.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure as MplFigure

from .config import ProgramConfig
from .diff import compute_diff

BINS = 20  # deleted-fraction histogram: [0, 0.05), ..., [0.95, 1.0]
MAX_SOURCES = 12  # sources shown by name in the per-source figure; the rest are "(other)"
STATUS_COLORS = {"ok": "#2a7ab0", "kept": "#9e9e9e", "fallback": "#e6a23c", "error": "#d62728",
                 "dropped": "#9467bd"}
_OTHER_COLOR = "#555555"


def _by_status(names) -> list[str]:
    """Statuses in the pipeline's order (ok, kept, fallback, error, dropped), unknown ones last by name."""
    known = list(STATUS_COLORS)
    return sorted(names, key=lambda s: (known.index(s) if s in known else len(known), s))


def bin_of(fraction: float) -> int:
    """Histogram bin of a deleted fraction (jobs/report.py bins in SQL the same way)."""
    return max(min(int(math.floor(fraction * BINS)), BINS - 1), 0)


def bin_edges() -> list[float]:
    return [round(i / BINS, 4) for i in range(BINS + 1)]


@dataclass
class Snapshot:
    """refined_docs at one table version, as the two aggregates the comparison needs."""

    version: int | None  # None: the table does not exist yet
    histogram: pd.DataFrame  # bin (int), docs (int)
    statuses: pd.DataFrame  # status, docs


@dataclass
class ReportInput:
    meta: dict[str, Any]  # shown at the top of the report and copied into the JSON
    current: Snapshot
    previous: Snapshot | None  # refined_docs before the last run's commits; None when there is none
    ops: pd.DataFrame  # op_stats view: kind, applied, reason, ops, docs
    sources: pd.DataFrame  # source, status, docs
    distill: pd.DataFrame  # reason, samples
    runs: pd.DataFrame  # run_summary view rows
    # doc_id, source, status, deleted_fraction, raw_text, refined_text, op_outcomes, error, model_id, fingerprint
    examples: pd.DataFrame
    program: ProgramConfig = field(default_factory=ProgramConfig)


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    data: dict[str, Any]  # the numbers plotted, JSON-ready
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _canvas(ncols: int = 1, width: float = 8.0, height: float = 3.6) -> tuple[MplFigure, list]:
    fig = MplFigure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def _counts(df: pd.DataFrame, key: str, value: str) -> dict[str, int]:
    """Sum of `value` by `key`, largest first (ties by name), as plain ints."""
    if df.empty:
        return {}
    s = df.groupby(key, dropna=False)[value].sum()
    pairs = sorted(((str(k), int(v)) for k, v in s.items()), key=lambda kv: (-kv[1], kv[0]))
    return dict(pairs)


def _histogram(snapshot: Snapshot) -> list[int]:
    counts = [0] * BINS
    for b, n in zip(snapshot.histogram["bin"], snapshot.histogram["docs"]):
        counts[int(b)] += int(n)
    return counts


def deleted_fraction_figure(current: Snapshot) -> Figure:
    counts = _histogram(current)
    edges = bin_edges()
    fig, (ax,) = _canvas()
    if sum(counts):
        ax.bar(edges[:-1], counts, width=1 / BINS, align="edge", color=STATUS_COLORS["ok"], edgecolor="white")
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of raw characters deleted")
        ax.set_ylabel("documents")
    else:
        _no_data(ax, "refined documents")
    return Figure("deleted_fraction", "Deleted fraction per document", {"bin_edges": edges, "docs": counts},
                  _png(fig))


def status_figure(current: Snapshot) -> Figure:
    counts = _counts(current.statuses, "status", "docs")
    fig, (ax,) = _canvas(width=6)
    if counts:
        bars = ax.bar(list(counts), list(counts.values()),
                      color=[STATUS_COLORS.get(s, _OTHER_COLOR) for s in counts])
        ax.bar_label(bars)
        ax.set_ylabel("documents")
    else:
        _no_data(ax, "refined documents")
    return Figure("status", "Refine status", {"docs": counts}, _png(fig))


def op_kinds_figure(ops: pd.DataFrame) -> Figure:
    applied = _counts(ops[ops["applied"]], "kind", "ops") if not ops.empty else {}
    not_applied = _counts(ops[~ops["applied"].astype(bool)], "kind", "ops") if not ops.empty else {}
    reasons = _counts(ops[~ops["applied"].astype(bool)], "reason", "ops") if not ops.empty else {}
    kinds = sorted(set(applied) | set(not_applied), key=lambda k: -(applied.get(k, 0) + not_applied.get(k, 0)))
    fig, (left, right) = _canvas(2, width=10)
    if kinds:
        a = [applied.get(k, 0) for k in kinds]
        left.barh(kinds, a, color=STATUS_COLORS["ok"], label="applied")
        left.barh(kinds, [not_applied.get(k, 0) for k in kinds], left=a, color=STATUS_COLORS["fallback"],
                  label="not applied")
        left.invert_yaxis()
        left.set_xlabel("ops")
        left.legend(loc="lower right")
        left.set_title("op kinds", fontsize=10)
    else:
        _no_data(left, "ops")
    if reasons:
        right.barh(list(reasons), list(reasons.values()), color=STATUS_COLORS["fallback"])
        right.invert_yaxis()
        right.set_xlabel("ops")
        right.set_title("why ops were not applied", fontsize=10)
    else:
        _no_data(right, "rejected ops")
    return Figure("op_kinds", "Program ops by kind",
                  {"applied": applied, "not_applied": not_applied, "not_applied_reasons": reasons}, _png(fig))


def sources_figure(sources: pd.DataFrame) -> Figure:
    totals = _counts(sources, "source", "docs")
    named = list(totals)[:MAX_SOURCES]
    rows = sources.assign(source=sources["source"].where(sources["source"].isin(named), "(other)"))
    table = (rows.groupby(["source", "status"])["docs"].sum().unstack(fill_value=0)
             if not rows.empty else pd.DataFrame())
    order = [s for s in [*named, "(other)"] if s in table.index]
    statuses = _by_status(table.columns)
    data = {src: {st: int(table.loc[src, st]) for st in statuses if table.loc[src, st]} for src in order}
    fig, (ax,) = _canvas(height=max(2.5, 0.35 * len(order) + 1.2))
    if order:
        left = [0] * len(order)
        for st in statuses:
            values = [int(table.loc[src, st]) for src in order]
            ax.barh(order, values, left=left, color=STATUS_COLORS.get(st, _OTHER_COLOR), label=st)
            left = [a + b for a, b in zip(left, values)]
        ax.invert_yaxis()
        ax.set_xlabel("documents")
        ax.legend(loc="lower right", fontsize=8)
    else:
        _no_data(ax, "refined documents")
    return Figure("sources", "Refine status per source", {"docs": data}, _png(fig))


def distill_figure(distill: pd.DataFrame) -> Figure:
    counts = _counts(distill, "reason", "samples")
    fig, (ax,) = _canvas()
    if counts:
        colors = [STATUS_COLORS["ok"] if r == "kept" else STATUS_COLORS["error"] if r == "error"
                  else STATUS_COLORS["fallback"] for r in counts]
        bars = ax.barh(list(counts), list(counts.values()), color=colors)
        ax.bar_label(bars, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("chunk samples")
    else:
        _no_data(ax, "distill samples")
    return Figure("distill_reasons", "Distillation: samples kept and why the others were dropped",
                  {"samples": counts}, _png(fig))


def comparison_figure(current: Snapshot, previous: Snapshot | None) -> Figure:
    title = "Run over run: refined_docs now vs before the last run"
    fig, (left, right) = _canvas(2, width=10)
    if previous is None:
        _no_data(left, "previous version of refined_docs")
        _no_data(right, "previous version")
        return Figure("run_over_run", title, {"current_version": current.version, "previous_version": None},
                      _png(fig))
    edges = bin_edges()
    hist = {"previous": _histogram(previous), "current": _histogram(current)}
    statuses = {"previous": _counts(previous.statuses, "status", "docs"),
                "current": _counts(current.statuses, "status", "docs")}
    labels = {"previous": f"v{previous.version}", "current": f"v{current.version}"}
    for key, color in (("previous", "#bbbbbb"), ("current", STATUS_COLORS["ok"])):
        left.stairs(hist[key], edges, label=labels[key], color=color, linewidth=2)
    left.set_xlim(0, 1)
    left.set_xlabel("deleted fraction")
    left.set_ylabel("documents")
    left.legend()
    names = _by_status(set(statuses["previous"]) | set(statuses["current"]))
    x = range(len(names))
    for offset, (key, color) in zip((-0.2, 0.2), (("previous", "#bbbbbb"), ("current", STATUS_COLORS["ok"]))):
        right.bar([i + offset for i in x], [statuses[key].get(n, 0) for n in names], width=0.4, color=color,
                  label=labels[key])
    right.set_xticks(list(x), names)
    right.set_ylabel("documents")
    right.legend()
    data = {"current_version": current.version, "previous_version": previous.version, "bin_edges": edges,
            "docs_by_bin": hist, "docs_by_status": statuses}
    return Figure("run_over_run", title, data, _png(fig))


def build_figures(inp: ReportInput) -> list[Figure]:
    # Labels are data (source names come from file names and input fields): a pair of "$" in one
    # would be read as mathtext, drawn garbled or refused with a parse error that stops the report.
    with rc_context({"text.parse_math": False}):
        return [
            deleted_fraction_figure(inp.current),
            op_kinds_figure(inp.ops),
            status_figure(inp.current),
            sources_figure(inp.sources),
            distill_figure(inp.distill),
            comparison_figure(inp.current, inp.previous),
        ]


def _example(row: Mapping[str, Any], program: ProgramConfig) -> tuple[str, dict[str, Any]]:
    """An example document as HTML (header + diff) and as its JSON summary."""
    fraction = row["deleted_fraction"]
    shown = "n/a" if fraction is None or pd.isna(fraction) else f"{fraction:.1%}"
    header = (f"<h3>{html.escape(str(row['doc_id']))}</h3><p class=\"doc-meta\">source "
              f"<b>{html.escape(str(row['source']))}</b> · status <b>{html.escape(str(row['status']))}</b>"
              f" · deleted {shown} · model {html.escape(str(row['model_id']))}"
              f" · fingerprint {html.escape(str(row['fingerprint']))}</p>")
    summary: dict[str, Any] = {"doc_id": row["doc_id"], "source": row["source"], "status": row["status"],
                               "deleted_fraction": None if shown == "n/a" else float(fraction),
                               "model_id": row["model_id"], "fingerprint": row["fingerprint"]}
    if row["error"]:
        header += f"<p class=\"error\">error: {html.escape(str(row['error']))}</p>"
        summary["error"] = row["error"]
    if row["raw_text"] is None:
        return header + "<p class=\"error\">raw text not found in raw_docs</p>", summary
    try:
        diff = compute_diff(row["raw_text"], op_outcomes=row["op_outcomes"], config=program)
    except ValueError as e:  # op_outcomes that do not replay on this text: shown, not hidden
        summary["diff_error"] = str(e)
        return header + f"<p class=\"error\">diff unavailable: {html.escape(str(e))}</p>", summary
    summary["ops"] = [{"op": op, "deleted_chars": n} for op, n in zip(diff.ops, diff.deleted_chars())]
    if row["refined_text"] is not None:
        # The stored text must be what the recorded ops give: a mismatch is a bug worth seeing.
        summary["replay_matches"] = diff.refined == row["refined_text"]
        if not summary["replay_matches"]:
            header += "<p class=\"error\">the stored refined_text differs from replaying the applied ops</p>"
    return header + diff.html(), summary


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:14px;margin:18px 0 2px}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
img{max-width:100%;border:1px solid #eee}.wide{overflow-x:auto}.doc-meta{margin:0 0 4px;font-size:12px;color:#555}.error{color:#b00}
"""


@dataclass(frozen=True)
class Report:
    inp: ReportInput
    figures: list[Figure]
    examples: list[tuple[str, dict[str, Any]]]  # (HTML, JSON summary) per example document

    def html(self) -> str:
        inp = self.inp
        meta_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                            for k, v in inp.meta.items())
        sections = [f'<section id="{f.id}"><h2>{html.escape(f.title)}</h2>'
                    f'<img alt="{html.escape(f.title, quote=True)}" src="{f.data_uri()}"></section>'
                    for f in self.figures]
        runs = (f'<div class="wide">{_cells(inp.runs).to_html(index=False, escape=True, na_rep="", border=0)}</div>'
                if not inp.runs.empty else "<p>no runs</p>")
        examples = "".join(h for h, _ in self.examples) or "<p>no refined documents</p>"
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>refinex_spark report</title><style>{_CSS}</style></head><body>"
            f"<h1>refinex_spark report</h1><table class=\"meta\">{meta_rows}</table>"
            + "".join(sections)
            + f'<section id="runs"><h2>Runs</h2>{runs}</section>'
            + '<section id="examples"><h2>Examples: deleted spans struck through, numbered by the op that '
              f'deleted them</h2>{examples}</section>'
            + "</body></html>\n"
        )

    def json(self) -> str:
        runs = [{k: _plain(v) for k, v in row.items()} for row in self.inp.runs.to_dict("records")]
        doc = {"meta": _plain(self.inp.meta),
               "figures": [{"id": f.id, "title": f.title, "data": _plain(f.data)} for f in self.figures],
               "runs": runs, "examples": _plain([summary for _, summary in self.examples])}
        return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _cells(df: pd.DataFrame) -> pd.DataFrame:
    """A table for display: maps (run_summary statuses) as "k=v, ...", missing values blank."""
    return df.map(lambda v: ", ".join(f"{k}={n}" for k, n in v.items()) if isinstance(v, dict)
                  else "" if v is None else v)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars and timestamps as JSON-ready values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item"):  # numpy scalar
        return _plain(value.item())
    if pd.isna(value):
        return None
    return str(value)


def build_report(inp: ReportInput) -> Report:
    return Report(inp, build_figures(inp), [_example(row, inp.program) for row in inp.examples.to_dict("records")])


def write_report(inp: ReportInput, out_dir: str | Path) -> tuple[Path, Path]:
    """report.html and report.json in `out_dir` (created); each written whole, then renamed into place."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(inp)
    paths = []
    for name, text in (("report.html", report.html()), ("report.json", report.json())):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
        paths.append(out / name)
    return paths[0], paths[1]
