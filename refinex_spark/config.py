"""Typed configuration: `conf/refinex.yaml` layered with an environment file and `--set` overrides.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names the key. The defaults below are the same values `conf/refinex.yaml` documents (a test
keeps the two identical); the YAML file is where each default is justified.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

def _conf_dir() -> Path:
    """conf/ of a source checkout, else the copy the wheel installed under <prefix>/share/refinex-spark.

    The prefix is not always sys.prefix (pip's --user and --prefix, Debian's /usr/local): the
    installed files' record says where it went, except for pip's --target, which puts share/ beside
    the package and leaves the record pointing elsewhere.
    """
    beside = Path(__file__).resolve().parent.parent
    checkout = beside / "conf"
    if (checkout / "refinex.yaml").is_file():
        return checkout
    try:
        files = importlib.metadata.distribution("refinex-spark").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    recorded = [Path(f.locate()) for f in files if f.as_posix().endswith("share/refinex-spark/conf/refinex.yaml")]
    found = (p for p in [*recorded, beside / "share" / "refinex-spark" / "conf" / "refinex.yaml"] if p.is_file())
    return next(found, checkout / "refinex.yaml").resolve().parent


CONF_DIR = _conf_dir()
ENVIRONMENTS = ("local", "yarn", "databricks")
# Every released refine prompt (conf/prompts/<version>.txt), newest last.
REFINE_PROMPT_VERSIONS: tuple[str, ...] = ("refine-v1",)


class ConfigError(ValueError):
    """A configuration file, key or value is invalid; the message names it."""


def _numeric(annotation: Any) -> bool:
    return annotation in (int, float) or any(a in (int, float) for a in get_args(annotation))


class _Section(BaseModel):
    # Floats are finite: no field reads .inf as "unbounded" (null says that, where allowed), and an
    # infinite timeout, backoff or chars-per-token would hang a run or size every budget at zero.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset()  # settings no result depends on: not in the fingerprint

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads True as 1: `max_rejected_per_chunk=true` would quietly be 1.
        if isinstance(v, bool) and info.field_name and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not a boolean (true/false)")
        return v


def _not_blank(value: str, what: str) -> str:
    """An empty `--set key=` is a slip, not a setting: no such field means "nothing"."""
    if not value.strip():
        raise ValueError(f"must be {what}, not empty")
    return value


def _model_location(value: str) -> str:
    """A model directory or hub id; `~` is the home directory, as in lake.path (no hub id starts with it)."""
    return os.path.expanduser(_not_blank(value, "a model directory or hub id"))


def _revision(value: Any) -> str | None:
    """A hub revision names a branch, tag or commit: a git ref, so no spaces and no `..`. A commit of
    digits only reads as a YAML number: taken as its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is not None and (not isinstance(value, str) or ".." in value
                              or not re.fullmatch(r"[\w.][\w./-]*", value)):
        raise ValueError("must be a hub branch, tag or commit (e.g. main, v1.0, a commit hash), or null")
    return value


def _http_url(value: str | None) -> str | None:
    """Endpoints are http(s) only: urllib would also open file:// and ftp:// URLs. No user:password@
    (urllib cannot send it, and error messages would show it) and no ?query (paths are appended)."""
    if value is not None and not re.fullmatch(r"https?://[^\s/@?#]+(/[^\s?#]*)?", value):
        raise ValueError("must be an http:// or https:// URL, with no user:password@, ?query or #fragment "
                         "(the key goes in the api_key_env variable)")
    return value


class ProgramConfig(_Section):
    dialect: Literal["refinex", "prox"] = "refinex"
    # A chunk whose program has this many rejected ops or more is kept unchanged (ProX: 2).
    max_rejected_per_chunk: int = Field(2, ge=1)
    # Bounds on untrusted model output: no 10**100 line numbers or megabyte strings.
    max_line_number: int = Field(10_000_000, ge=1)
    max_text_chars: int = Field(2_000, ge=1)
    max_program_chars: int = Field(100_000, ge=1)
    max_ops: int = Field(512, ge=1)


class ChunkingConfig(_Section):
    token_budget: int = Field(1500, ge=16)
    # Fast token estimate when no tokenizer is given: ~4 chars per token for English BPE.
    chars_per_token: float = Field(4.0, gt=0)
    # A line longer than this share of the budget is shown truncated (and is removable only whole).
    max_line_fraction: float = Field(0.5, gt=0, le=1)


class DistillConfig(_Section):
    max_illegal_fraction: float = Field(0.05, ge=0, le=1)
    max_deleted_fraction: float = Field(0.9, gt=0, le=1)
    max_ops_per_chunk: int = Field(24, ge=1)
    keep_all_ratio: float = Field(0.3, ge=0, le=1)
    min_remove_str_chars: int = Field(3, ge=1)
    max_missed_chars_per_chunk: int = Field(8, ge=0)
    shingle_size: int = Field(3, ge=1)
    seed: int = 0


def lake_path_problem(path: str) -> str | None:
    """Why `path` cannot be lake.path, or None (checked when loading the config and by the lake)."""
    if not path.strip():
        return "must be a directory path or a storage URI (hdfs://, s3://, abfss://, dbfs:/), not empty"
    if any(c in path for c in "\x00\n\r"):
        return "must not contain a NUL or newline character"
    if any(c in path for c in "*?[]{}"):
        return "must not contain glob characters (*?[]{}), which Spark would expand"
    if "%" in path:
        return "must not contain '%', which delta-rs reads as the start of a URI escape (%20 is a space)"
    if "#" in path:
        # The commits land, but delta-rs then finds no history: every append after the first fails.
        return "must not contain '#', which delta-rs reads as the start of a URI fragment"
    if "\\" in path:
        # Spark writes a file named `a\b`, delta-rs then reads `a/b`: the first commit lands, every later
        # read or commit of the table fails.
        return "must not contain '\\', which delta-rs reads as a path separator (write / instead)"
    return None


class LakeConfig(_Section):
    path: str = "./lake"
    engine: Literal["auto", "spark", "delta-rs"] = "auto"
    # Databricks/Unity Catalog: write tables into this catalog schema instead of a path.
    catalog_schema: str | None = None
    # delta-rs engine: staging dirs of writes that never committed (a crashed run) are removed by
    # a later run once nothing in them was written for this long; fresher ones may belong to a
    # concurrent writer.
    staging_retention_hours: float = Field(24.0, ge=0)
    # Readers split a Parquet file only between row groups: one big file (the ingest of one large
    # input file) would otherwise be read by one task while the other cores wait.
    row_group_mb: int = Field(32, ge=1, le=1024)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        problem = lake_path_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("catalog_schema")
    @classmethod
    def _identifier(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", v):
            raise ValueError("must be 'schema' or 'catalog.schema' made of letters, digits and _")
        return v


class IngestConfig(_Section):
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    text_field: str = "text"
    # Declared after text_field so their validators can compare them with it.
    id_field: str | None = "id"
    source_field: str | None = None
    max_doc_chars: int = Field(2_000_000, ge=1)
    split_mb: float = Field(64.0, ge=1 / 1024)  # 1 KiB at least

    RUN_ONLY: ClassVar[frozenset[str]] = frozenset({"split_mb"})  # how files are cut into tasks: no result changes

    _check_text_field = field_validator("text_field")(classmethod(lambda cls, v: _not_blank(v, "a field name")))

    @field_validator("id_field")
    @classmethod
    def _id_field(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        _not_blank(v, "a field name, or null (doc_id is then the sha256 of the text)")
        if v == info.data.get("text_field"):
            raise ValueError(f"must differ from ingest.text_field ({v!r}): the id and the text are separate fields")
        return v

    @field_validator("source_field")
    @classmethod
    def _source_field(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        _not_blank(v, "a field name, or null (the source is then the input file's name)")
        if v == info.data.get("text_field"):
            raise ValueError(f"must differ from ingest.text_field ({v!r}): the source and the text are separate "
                             "fields")
        return v


class SparkConfig(_Section):
    master: str | None = "local[2]"
    app_name: str = "refinex-spark"
    conf: dict[str, str] = Field(default_factory=dict)

    _check_app_name = field_validator("app_name")(classmethod(lambda cls, v: _not_blank(v, "an application name")))

    @field_validator("master")
    @classmethod
    def _master(cls, v: str | None) -> str | None:
        # null hands the choice to spark-submit or the cluster; '' would reach Spark as a master URL.
        if v is not None:
            _not_blank(v, "a master URL (local[2], yarn, spark://host:7077), or null (spark-submit's or the cluster's)")
        return v

    @field_validator("conf")
    @classmethod
    def _spark_keys(cls, v: dict[str, str]) -> dict[str, str]:
        # A typo (`sprak.`, a misplaced `sql.shuffle.partitions`) would pass silently; Hadoop and
        # Parquet settings have their own prefix, spark.hadoop.*, so nothing needs a bare key.
        bad = sorted(k for k in v if not k.startswith("spark."))
        if bad:
            raise ValueError(f"keys must be Spark settings starting with 'spark.' (Hadoop ones as spark.hadoop.*), "
                             f"got {', '.join(map(repr, bad))}")
        return v


class ModelConfig(_Section):
    # A local directory or hub id of a trained refine model.
    path: str = "./models/refine"
    # A hub id's branch, tag or commit (None: main). The driver pins it to a commit, which every
    # worker loads and the rows' fingerprint names; a local directory has none (its files are its revision).
    revision: str | None = None
    backend: Literal["hf", "vllm", "openai"] = "hf"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    # A released prompt, conf/prompts/<prompt_version>.txt (a trained model records its version).
    prompt_version: str = REFINE_PROMPT_VERSIONS[-1]
    # openai backend: a served model over HTTP; the key is read from this environment variable.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str | None = None  # None: model.path names the served model
    request_timeout_s: float = Field(120.0, gt=0)
    # Retries of a request on 408/409/429/5xx, timeouts, connection errors and unusable replies; the
    # backoff doubles (with jitter, at most 120 s a wait) and a longer Retry-After ends the attempts.
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)

    _check_base_url = field_validator("base_url")(classmethod(lambda cls, v: _http_url(v)))
    _check_path = field_validator("path")(classmethod(lambda cls, v: _model_location(v)))
    _check_revision = field_validator("revision", mode="before")(classmethod(lambda cls, v: _revision(v)))
    _check_key_env = field_validator("api_key_env")(classmethod(lambda cls, v: _not_blank(v, "an environment variable name")))
    _check_served = field_validator("served_model")(classmethod(
        lambda cls, v: v if v is None else _not_blank(v, "a served model name, or null (model.path is its name)")))

    @field_validator("prompt_version")
    @classmethod
    def _prompt_name(cls, v: str) -> str:
        if v not in REFINE_PROMPT_VERSIONS:
            raise ValueError(f"must be a released refine prompt version: {', '.join(REFINE_PROMPT_VERSIONS)}")
        return v


class RefineConfig(_Section):
    # Each slice of this many documents is one Delta commit: a crash loses one slice, not the run.
    docs_per_commit: int = Field(1_000_000, ge=1)
    # A batch in which this many documents or more all fail, each on its own, with the backend
    # answering, fails the task: a setting refuses them, and error rows are retried only on request.
    failing_batch_docs: int = Field(8, ge=2)
    progress_interval_s: float = Field(10.0, gt=0)


class TrainConfig(_Section):
    # A local directory or hub id of the causal LM to fine-tune.
    base: str = "Qwen/Qwen3-0.6B-Base"
    # A hub id's branch, tag or commit (None: main), pinned to a commit that every training process
    # loads and the model card records.
    base_revision: str | None = None
    output_dir: str = "./models/refine"
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    gradient_accumulation: int = Field(4, ge=1)
    max_seq_len: int = Field(2048, ge=64)
    eval_fraction: float = Field(0.02, ge=0, lt=1)
    max_eval_samples: int = Field(200, ge=0)
    save_steps: int = Field(500, ge=1)
    seed: int = 0
    # `train --distributed`: TorchDistributor processes (one GPU each). None: every executor GPU
    # (spark.executor.instances x spark.executor.resource.gpu.amount); one in local mode.
    processes: int | None = Field(None, ge=1)

    _check_output_dir = field_validator("output_dir")(classmethod(lambda cls, v: _not_blank(v, "a directory path")))
    _check_base = field_validator("base")(classmethod(lambda cls, v: _model_location(v)))
    _check_base_revision = field_validator("base_revision", mode="before")(classmethod(lambda cls, v: _revision(v)))


class ExpertConfig(_Section):

    """`expert generate`: a sample of raw_docs cleaned end to end by a served (or local) LLM."""

    backend: Literal["openai", "hf"] = "openai"
    # openai: any OpenAI-compatible chat-completions server; the key is read from this env variable.
    base_url: str | None = None
    api_key_env: str = "REFINEX_EXPERT_API_KEY"
    # The served model name (openai) or a local directory / hub id (hf); recorded on every row.
    model: str = "Qwen/Qwen2.5-72B-Instruct"
    prompt_version: str = Field("expert-v1", pattern=r"^expert-v[0-9]+$")
    # The sample: exactly one of a fraction or a count of raw_docs (neither: the run refuses).
    sample_fraction: float | None = Field(None, gt=0, le=1)
    sample_count: int | None = Field(None, ge=1)
    stratify_by_source: bool = False
    seed: int = 0
    # Documents longer than the context are split into line-aligned pieces (token estimate below).
    context_tokens: int = Field(32_768, ge=256)
    chars_per_token: float = Field(3.0, gt=0)
    temperature: float = Field(0.0, ge=0)
    # Requests in flight per Spark task, and pending documents per task.
    concurrency: int = Field(8, ge=1)
    docs_per_task: int = Field(64, ge=1)
    # Each slice of this many pending documents is one Delta commit: a crash loses one slice's answers.
    docs_per_commit: int = Field(10_000, ge=1)
    request_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_base_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(120.0, ge=0)
    # Run-wide cap on requests (retries included), split evenly over the tasks; null: no cap.
    max_requests: int | None = Field(None, ge=1)
    progress_interval_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_sample_size(self) -> "ExpertConfig":
        if self.sample_fraction is not None and self.sample_count is not None:
            raise ValueError("set sample_fraction or sample_count, not both")
        return self

    _check_base_url = field_validator("base_url")(classmethod(lambda cls, v: _http_url(v)))
    _check_model = field_validator("model")(classmethod(lambda cls, v: _not_blank(
        v, "a served model name or a model directory / hub id")))
    _check_key_env = field_validator("api_key_env")(classmethod(lambda cls, v: _not_blank(v, "an environment variable name")))


class Config(_Section):
    program: ProgramConfig = ProgramConfig()
    chunking: ChunkingConfig = ChunkingConfig()
    distill: DistillConfig = DistillConfig()
    lake: LakeConfig = LakeConfig()
    ingest: IngestConfig = IngestConfig()
    spark: SparkConfig = SparkConfig()
    model: ModelConfig = ModelConfig()
    refine: RefineConfig = RefineConfig()
    train: TrainConfig = TrainConfig()
    expert: ExpertConfig = ExpertConfig()

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections: the settings that change a stage's results."""
        names = sections or tuple(type(self).model_fields)
        payload = {n: (section := getattr(self, n)).model_dump(mode="json", exclude=set(section.RUN_ONLY))
                   for n in names}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _CoreSchemaLoader(yaml.SafeLoader):
    """YAML 1.2's core schema, which PyYAML (YAML 1.1) does not follow: `010` is ten, not eight; `1e3` is a
    number; `yes`, `no`, `on`, `off` are text, not booleans; `1:30` and `2024-01-01` are text, not ninety and
    a date. A setting means what it reads as."""


_CORE = {  # tag: (pattern, first characters, constructor of the matched text)
    "bool": (r"true|True|TRUE|false|False|FALSE", "tTfF", lambda text: text.lower() == "true"),
    "int": (r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789",
            lambda text: int(text[2:], 8) if text.startswith("0o") else int(text, 16 if text.startswith("0x") else 10)),
    "float": (r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
              "-+.0123456789", lambda text: float(text.lower().replace(".", "", 1) if "n" in text.lower() else text)),
}
_CoreSchemaLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag.rpartition(":")[2] not in (*_CORE, "timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _core_constructor(make):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        text = loader.construct_scalar(node)
        try:
            return make(text)
        except ValueError:  # an explicit tag (`!!int 0b1`) on text that is no such value
            raise yaml.constructor.ConstructorError(None, None, f"{text!r} is no valid {node.tag.rpartition(':')[2]}",
                                                    node.start_mark) from None
    return construct


for _name, (_pattern, _first, _make) in _CORE.items():
    _CoreSchemaLoader.add_implicit_resolver(f"tag:yaml.org,2002:{_name}", re.compile(f"^(?:{_pattern})$"), list(_first))
    _CoreSchemaLoader.add_constructor(f"tag:yaml.org,2002:{_name}", _core_constructor(_make))


def _override_value(key: str, raw: str) -> Any:
    """`raw` read as YAML (numbers, bools, null), or the raw text where YAML would drop a `#` comment.

    On a command line `#` is data, not a comment: YAML would cut `lake.path=/data/my lake #1` to
    '/data/my lake' and `ingest.source_field=#src` to null, pointing the run elsewhere without a word.
    The text is kept rather than refused because it is what was typed; a field that is not text then
    refuses it as a bad value naming the key (`token_budget=700 #x`).
    """
    loader = _CoreSchemaLoader(raw)
    try:
        node = loader.get_single_node()
        value = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"--set {key}: {raw!r} is not valid YAML ({problem}); quote a text value: "
                          f"--set \"{key}='...'\"") from None
    finally:
        loader.dispose()
    inside = raw[node.start_mark.index:node.end_mark.index] if node is not None else ""
    return raw if raw.count("#") > inside.count("#") else value  # a '#' outside the value began a comment


def _annotation(parts: list[str] | tuple) -> Any:
    """The type of the setting (or section) a dotted key names; None for no such key."""
    model: Any = Config
    for p in parts:
        field = getattr(model, "model_fields", {}).get(p)
        if field is None:
            return None
        model = field.annotation
    return model


def _text_field(parts: list[str]) -> bool:
    """Whether the dotted key names a setting that takes text and no number."""
    model = _annotation(parts)
    return model is str or (str in get_args(model) and not _numeric(model))


def parse_override(item: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; the value is read as YAML (see `_override_value`)."""
    key, sep, raw = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_.\-]+)*", key):
        raise ConfigError(f"--set expects key=value with a dotted key, got {item!r}")
    parts = key.split(".")
    if parts[0] == "spark" and len(parts) > 2 and parts[1] == "conf":
        parts = ["spark", "conf", ".".join(parts[2:])]  # Spark keys contain dots
        value: Any = raw
    else:
        value = _override_value(key, raw) if raw.strip() else raw  # blank is what was typed, not YAML's null
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _text_field(parts):
            value = raw  # a text setting that reads as a number is its text: commit 0123456 keeps its 0
    for p in reversed(parts):
        value = {p: value}
    return value


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_CoreSchemaLoader) or {}  # noqa: S506 - a SafeLoader
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(_annotation(e["loc"][:-1]).model_fields)
            lines.append(f"unknown key '{key}' (allowed: {allowed})")
        else:
            lines.append(f"bad value for '{key}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def load_config(
    env: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    files: list[str | Path] | tuple[str | Path, ...] = (),
    conf_dir: Path = CONF_DIR,
) -> Config:
    """Defaults file, then the environment file, then extra files, then `--set` overrides."""
    data: dict = {}
    layers = [conf_dir / "refinex.yaml"] if (conf_dir / "refinex.yaml").exists() else []
    if env is not None:
        if env not in ENVIRONMENTS:
            raise ConfigError(f"unknown environment '{env}' (allowed: {', '.join(ENVIRONMENTS)})")
        layers.append(conf_dir / f"{env}.yaml")
    layers += [Path(f) for f in files]
    for path in layers:
        data = _deep_merge(data, _read_yaml(path))
    for item in overrides:
        data = _deep_merge(data, parse_override(item))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
