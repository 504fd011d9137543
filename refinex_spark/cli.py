"""`refinex-spark` command line: one subcommand per pipeline stage, plus sql, history, report and demo.

spark-submit runs a file, not a console script: `spark-submit .../refinex_spark/spark_submit.py
ingest data/` (or `python -m refinex_spark ingest data/`) is the same as `refinex-spark ingest data/`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .config import ENVIRONMENTS, Config, ConfigError, load_config


def _int_from(least: int) -> Callable[[str], int]:
    what = "a positive integer" if least == 1 else f"an integer of at least {least}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


_positive_int, _non_negative_int = _int_from(1), _int_from(0)


def _checked(check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type from a check that raises ValueError: a bad table name is a usage error
    with the check's message, before Spark starts."""
    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text
    return parse


def _named(text: str) -> None:
    if not text.strip():
        raise ValueError("must be a name, not blank")


def _table(text: str) -> None:
    from .jobs.sql import check_table
    check_table(text)


def _table_version(text: str) -> None:
    from .jobs.sql import parse_as_of
    parse_as_of([text])


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", choices=ENVIRONMENTS, default=None,
                   help="layer conf/<env>.yaml over conf/refinex.yaml")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="extra YAML config layer")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set lake.path=/data/lake (repeatable)")


def _ingest(ctx, a):
    from .jobs import ingest
    return ingest.run(ctx, a.paths)


def _expert_import(ctx, a):
    from .jobs import expert_import
    return expert_import.run(ctx, a.path, default_model=a.model)


def _expert_generate(ctx, a):
    from .jobs import expert_generate
    return expert_generate.run(ctx, fraction=a.fraction, count=a.count, seed=a.seed, stratify=a.stratify,
                               backend=a.backend)


def _distill(ctx, a):
    from .jobs import distill
    return distill.run(ctx)


def _export_sft(ctx, a):
    from .jobs import export_sft
    return export_sft.run(ctx, a.output, fmt=a.format)


def _train(ctx, a):
    from .jobs import train
    return train.run(ctx, init_tiny=a.init_tiny, distributed=a.distributed, fresh=a.fresh)


def _refine(ctx, a):
    from .jobs import refine
    return refine.run(ctx, retry_errors=a.retry_errors)


def _sql(ctx, a):
    from .jobs import sql
    return sql.run(ctx, a.query, limit=a.limit, as_of=a.as_of_version)


def _history(ctx, a):
    from .jobs import sql
    return sql.history(ctx, a.table)


def _report(ctx, a):
    from .jobs import report
    return report.run(ctx, a.output_dir, examples_per_status=a.examples_per_status, model_id=a.model_id,
                      fingerprint=a.fingerprint, distill_fingerprint=a.distill_fingerprint)


def _demo(ctx, a):
    from .jobs import demo
    return demo.run(ctx, n_docs=a.docs, workdir=a.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinex-spark", description=__doc__.splitlines()[0])
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(fn=fn, stage=name)
        return p

    p = add("ingest", _ingest, "jsonl/parquet/text files or directories -> raw_docs (+ rejects)")
    p.add_argument("paths", nargs="+")

    expert = sub.add_parser("expert", help="expert outputs -> expert_outputs")
    _common(expert)  # listed in its help too: they are taken from anywhere on the line
    expert_sub = expert.add_subparsers(dest="expert_command", required=True, metavar="ACTION")
    p = add("import", _expert_import, "import precomputed expert outputs (doc_id, text, model)", expert_sub)
    p.set_defaults(stage="expert")
    p.add_argument("path")
    p.add_argument("--model", default=None, type=_checked(_named),
                   help="expert model name of the records with no 'model' field")
    p = add("generate", _expert_generate, "clean a seeded sample of raw_docs with an LLM (served endpoint or local)",
            expert_sub)
    p.set_defaults(stage="expert")
    size = p.add_mutually_exclusive_group()
    # Checked here, so a bad size is a usage error before Spark starts (expert.sample_* bounds).
    size.add_argument("--fraction", type=_fraction, default=None, help="sample this fraction of raw_docs (0 < f <= 1)")
    size.add_argument("--count", type=_positive_int, default=None, help="sample this many raw_docs")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: expert.seed)")
    p.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=None,
                   help="proportional quota per source (default: expert.stratify_by_source)")
    p.add_argument("--backend", choices=("openai", "hf"), default=None, help="default: expert.backend")

    add("distill", _distill, "raw_docs x expert_outputs -> distill_samples")
    p = add("export-sft", _export_sft, "kept distill_samples -> a directory of chat-format SFT part files")
    p.add_argument("output")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    p = add("train", _train, "fine-tune the refine model on distill_samples")
    p.add_argument("--init-tiny", action="store_true", help="build a tiny local Qwen3 model as the base (CI, demo)")
    p.add_argument("--distributed", action="store_true", help="train through TorchDistributor")
    p.add_argument("--fresh", action="store_true",
                   help="start from the base even where checkpoints of an unfinished run of other settings are")
    p = add("refine", _refine, "raw_docs -> refined_docs with the refine model")
    p.add_argument("--retry-errors", action="store_true",
                   help="refine again the documents whose row for this model and fingerprint is an error")
    p = add("sql", _sql, "run SQL over the lake tables (each registered as a view)")
    p.add_argument("query")
    p.add_argument("--limit", type=_positive_int, default=50, help="rows to show (default 50)")
    p.add_argument("--as-of-version", action="append", default=[], metavar="TABLE=N", type=_checked(_table_version),
                   help="read TABLE at Delta version N (repeatable)")
    p = add("history", _history, "commit history of a lake table")
    p.add_argument("table", type=_checked(_table))
    p = add("report", _report, "HTML report with plots (+ JSON of the figures) of the lake")
    p.add_argument("output_dir", nargs="?", default="./report")
    p.add_argument("--examples-per-status", type=_non_negative_int, default=3,
                   help="example diffs shown per refine status")
    p.add_argument("--model-id", help="report this model's refined_docs rows (default: the newest generation's)")
    p.add_argument("--fingerprint", help="report this refine fingerprint's rows (default: the newest generation's)")
    p.add_argument("--distill-fingerprint",
                   help="report the distill_samples of this distill fingerprint (default: the newest samples')")
    p = add("demo", _demo, "synthetic corpus through the whole pipeline into lake.path (./lake)")
    p.add_argument("--docs", type=_positive_int, default=300, help="synthetic documents (default 300)")
    p.add_argument("--workdir", default="./demo-data", help="where the corpus is written (default ./demo-data)")
    return parser


def parse_config(argv: Sequence[str]) -> tuple[Config, list[str]]:
    """Take --env/--config/--set from anywhere on the line (before or after the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    _common(common)
    found, rest = common.parse_known_args(argv)
    return load_config(env=found.env, overrides=found.overrides, files=found.config), rest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        config, rest = parse_config(argv)
    except ConfigError as e:
        parser.parse_args(argv)  # usage errors first, then the config error
        parser.exit(2, f"refinex-spark: config error: {' '.join(str(e).split())}\n")  # one line, as run errors
    args = parser.parse_args(rest)
    from deltalake.exceptions import DeltaError

    from .lake import LakeError
    from .runtime import ConcurrentRunError, open_run
    from .spark_session import SparkStartError

    try:
        ctx = open_run(config, args.stage)  # refuses bad Spark settings and lakes (ConfigError, LakeError)
        result = args.fn(ctx, args)
    # DeltaError: delta-rs refusing a path or a commit is a run error like the others, not a traceback.
    except (ValueError, OSError, ConcurrentRunError, LakeError, SparkStartError, DeltaError) as e:
        message = " ".join(str(e).split())  # one line, whatever the underlying library put in the message
        print(f"refinex-spark {args.stage}: error: {message}", file=sys.stderr)
        return 1
    if isinstance(result, dict):
        ctx.stats.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
