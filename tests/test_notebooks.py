"""The audit notebooks run headless against the audited demo lake, without errors and with outputs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from refinex_spark.lake import Lake

from audit_lake import ORACLE_MODEL, audited_lake_config  # noqa: F401 - audited_lake_config is a fixture

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def run_notebook(name: str, lake_path: str, parameters: str, tmp_path: Path, monkeypatch) -> nbformat.NotebookNode:
    """Execute like a user would (kernel in notebooks/, lake from $REFINEX_LAKE), with `parameters`
    injected after the parameter cell as papermill does; the executed copy is kept in tmp_path."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(parameters, metadata={"tags": ["injected-parameters"]}))
    # Small local Spark, as the test session's: two cores, no UI.
    layer = tmp_path / "spark.yaml"
    layer.write_text('spark:\n  conf:\n    spark.sql.shuffle.partitions: "2"\n    spark.ui.enabled: "false"\n')
    monkeypatch.setenv("REFINEX_LAKE", lake_path)
    monkeypatch.setenv("REFINEX_CONFIG", str(layer))
    # The kernel imports refinex_spark from this checkout, installed or not.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(nb, kernel_name="python3", timeout=240, resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / name)
    return nb


def outputs(nb: nbformat.NotebookNode, mime: str) -> list[str]:
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type in ("display_data", "execute_result") and mime in o.get("data", {})]


def stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o["text"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream" and o["name"] == "stdout")


def test_audit_notebook(audited_lake_config, tmp_path, monkeypatch) -> None:
    nb = run_notebook("audit.ipynb", audited_lake_config.lake.path, 'STATUS = "ok"\nN_SAMPLES = 3', tmp_path,
                      monkeypatch)
    html = outputs(nb, "text/html")
    diffs = [h for h in html if 'class="refinex-diff"' in h]
    assert len(diffs) == 3 and all('<del style="color:red"' in d for d in diffs)
    headers = [h for h in html if h.startswith("<h3>")]
    assert len(headers) == 3 and all("status <b>ok</b>" in h for h in headers)  # the filter held
    assert sum("<table" in h for h in html) >= 4  # overview, runs, op stats, sample, op outcomes
    assert len(outputs(nb, "image/png")) == 3  # deleted fraction, per source, op kinds
    out = stdout(nb)
    assert out.count("replay matches the stored refined_text") == 3 and "REPLAY DIFFERS" not in out
    assert re.search(r"views: .*audit, op_stats, run_summary, distill_summary", out)
    # The lake holds two refine generations (the demo model's and the oracle's): the newest is shown.
    assert re.search(r"generation: .* / .* \(2 in refined_docs\)", out) and f"model {ORACLE_MODEL}" in headers[0]


def test_distill_audit_notebook(spark, audited_lake_config, tmp_path, monkeypatch) -> None:
    lake = Lake(spark, audited_lake_config.lake)
    dropped = lake.read("distill_samples").where("NOT kept").select("drop_reason").distinct().collect()
    reason = sorted(r.drop_reason for r in dropped)[0] if dropped else "kept"
    nb = run_notebook("distill_audit.ipynb", audited_lake_config.lake.path, f"REASON = {reason!r}", tmp_path,
                      monkeypatch)
    html = outputs(nb, "text/html")
    docs = [h for h in html if h.startswith("<h3>")]
    assert docs and all('class="refinex-diff"' in h and "expert output" in h for h in docs)
    assert any('<del style="color:red"' in h for h in docs)
    chunk_tables = [h for h in html if "<table" in h and "drop_reason" in h and "chunk_index" in h]
    assert chunk_tables and all(reason in t for t in chunk_tables[: len(docs)])  # every shown doc has one
    assert len(outputs(nb, "image/png")) == 2
    assert "distilled documents match" in stdout(nb)


def test_notebooks_run_on_a_lake_before_distill_and_refine(audited_lake_config, tmp_path, monkeypatch) -> None:
    """A lake with raw_docs only (ingested, nothing distilled or refined yet): every plot says there is
    nothing to plot instead of failing the notebook."""
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(Path(audited_lake_config.lake.path) / "raw_docs", lake / "raw_docs")
    audit = run_notebook("audit.ipynb", str(lake), "", tmp_path, monkeypatch)
    out = stdout(audit)
    assert "generation: none yet" in out and "no refined documents with a deleted fraction" in out
    assert "no refined documents\n" in out and "no ops" in out and "0 documents match; showing 0" in out
    distill = run_notebook("distill_audit.ipynb", str(lake), "", tmp_path, monkeypatch)
    out = stdout(distill)
    assert "distill fingerprint: none yet" in out and "no distill samples" in out and "no distilled documents" in out
