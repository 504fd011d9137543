"""Typed config: layering, --set overrides, errors that name the key, defaults file == code defaults."""

from __future__ import annotations

import pytest
import yaml

from refinex_spark.config import CONF_DIR, Config, ConfigError, load_config, parse_override


def test_defaults_file_matches_typed_defaults():
    data = yaml.safe_load((CONF_DIR / "refinex.yaml").read_text())
    assert Config.model_validate(data) == Config()


@pytest.mark.parametrize("env", ["local", "yarn", "databricks"])
def test_environment_files_load(env):
    cfg = load_config(env=env)
    assert cfg.program == Config().program  # environments change where things run, not results
    assert cfg.fingerprint("program", "chunking", "distill") == Config().fingerprint("program", "chunking", "distill")


def test_environment_layers():
    assert load_config(env="yarn").lake.engine == "spark"
    assert load_config(env="databricks").lake.catalog_schema == "main.refinex"
    assert load_config(env="local").spark.master == "local[2]"


def test_set_overrides_types_and_nesting():
    cfg = load_config(overrides=["distill.max_illegal_fraction=0.1", "lake.path=/tmp/x", "ingest.id_field=null",
                                 "spark.conf.spark.sql.shuffle.partitions=4"])
    assert cfg.distill.max_illegal_fraction == 0.1
    assert cfg.lake.path == "/tmp/x"
    assert cfg.ingest.id_field is None
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "4"


def test_later_layers_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("chunking:\n  token_budget: 900\n")
    cfg = load_config(files=[extra], overrides=["chunking.token_budget=700"])
    assert cfg.chunking.token_budget == 700
    assert load_config(files=[extra]).chunking.token_budget == 900


@pytest.mark.parametrize("item, needle", [
    ("lake.bogus=1", "unknown key 'lake.bogus' (allowed: path, engine, catalog_schema"),
    ("nosuch.key=1", "unknown key 'nosuch'"),
    ("lake.engine=duckdb", "bad value for 'lake.engine'"),
    ("distill.max_illegal_fraction=2", "bad value for 'distill.max_illegal_fraction'"),
    ("chunking.token_budget=abc", "bad value for 'chunking.token_budget'"),
    ("lake.catalog_schema=x;DROP TABLE y", "bad value for 'lake.catalog_schema'"),
    ("model.base_url=file:///etc/passwd", "bad value for 'model.base_url'"),
    ("expert.base_url=ftp://host/v1", "bad value for 'expert.base_url'"),
    ("lake.path=", "bad value for 'lake.path': Value error, must be a directory path or a storage URI"),
    ("lake.staging_retention_hours=.inf", "bad value for 'lake.staging_retention_hours'"),
    ("lake.path=/data/lake*", "bad value for 'lake.path': Value error, must not contain glob characters"),
    ("model.prompt_version=../../etc/x", "bad value for 'model.prompt_version': Value error, must be a released"),
    ("model.prompt_version=refine..v1", "bad value for 'model.prompt_version'"),
    ("model.prompt_version=", "bad value for 'model.prompt_version'"),
    ("ingest.text_field=", "bad value for 'ingest.text_field': Value error, must be a field name, not empty"),
    ("ingest.id_field=", "bad value for 'ingest.id_field': Value error, must be a field name, or null"),
    ("ingest.id_field=text", "bad value for 'ingest.id_field': Value error, must differ from ingest.text_field"),
    ("spark.conf.sql.shuffle.partitions=4", "bad value for 'spark.conf': Value error, keys must be Spark settings "
                                            "starting with 'spark.'"),
    ("train.output_dir=", "bad value for 'train.output_dir': Value error, must be a directory path, not empty"),
    # An empty key variable would mean "no API key" without a word.
    ("model.api_key_env=", "bad value for 'model.api_key_env': Value error, must be an environment variable name"),
    ("expert.api_key_env=", "bad value for 'expert.api_key_env': Value error, must be an environment variable name"),
    ("model.served_model=", "bad value for 'model.served_model': Value error, must be a served model name, or null"),
    # Blanks typed are blanks, not YAML's null: the message says empty, with what was typed.
    ("model.path=  ", "bad value for 'model.path': Value error, must be a model directory or hub id, not empty (got '  ')"),
])
def test_errors_name_the_key(item, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[item])
    assert needle in str(err.value)


def test_valid_names_still_load():
    cfg = load_config(overrides=["model.prompt_version=refine-v1", "ingest.text_field=body",
                                 "ingest.id_field=text", "lake.path=s3://bucket/lake"])
    assert (cfg.model.prompt_version, cfg.ingest.id_field) == ("refine-v1", "text")
    assert cfg.lake.path == "s3://bucket/lake"


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="unknown environment"):
        load_config(env="mars")


def test_fingerprint_tracks_result_settings_only():
    base = Config()
    changed = load_config(overrides=["distill.max_ops_per_chunk=5"])
    moved = load_config(overrides=["lake.path=/elsewhere"])
    sections = ("program", "chunking", "distill")
    assert changed.fingerprint(*sections) != base.fingerprint(*sections)
    assert moved.fingerprint(*sections) == base.fingerprint(*sections)
    # How input files are cut into tasks changes no result; how big a document may be does.
    assert load_config(overrides=["ingest.split_mb=1"]).fingerprint("ingest") == base.fingerprint("ingest")
    assert load_config(overrides=["ingest.max_doc_chars=10"]).fingerprint("ingest") != base.fingerprint("ingest")


@pytest.mark.parametrize("item, needle", [
    # delta-rs reads `\` as a separator: the first commit lands, then the table cannot be read back.
    ("lake.path=/data/back\\slash/lake", "bad value for 'lake.path': Value error, must not contain '\\'"),
    ("model.request_timeout_s=.inf", "bad value for 'model.request_timeout_s'"),
    ("expert.request_timeout_s=.inf", "bad value for 'expert.request_timeout_s'"),
    ("expert.backoff_max_s=.inf", "bad value for 'expert.backoff_max_s'"),
    ("chunking.chars_per_token=.inf", "bad value for 'chunking.chars_per_token'"),
    ("expert.chars_per_token=.inf", "bad value for 'expert.chars_per_token'"),
    ("expert.temperature=.nan", "bad value for 'expert.temperature'"),
    ("program.max_rejected_per_chunk=true", "bad value for 'program.max_rejected_per_chunk': Value error, must be a "
                                            "number, not a boolean"),
    ("expert.max_requests=true", "bad value for 'expert.max_requests': Value error, must be a number"),
    ("chunking.chars_per_token=on", "bad value for 'chunking.chars_per_token': Input should be a valid number"),
    ("ingest.source_field=text", "bad value for 'ingest.source_field': Value error, must differ from ingest."),
    ("ingest.source_field=", "bad value for 'ingest.source_field': Value error, must be a field name, or null"),
    ("model.path=", "bad value for 'model.path': Value error, must be"),
    ("expert.model=", "bad value for 'expert.model': Value error, must be"),
    ("train.base=", "bad value for 'train.base': Value error, must be"),
    ("spark.app_name=", "bad value for 'spark.app_name': Value error, must be"),
    ("spark.master=", "bad value for 'spark.master': Value error, must be a master URL"),
    # Not valid YAML: an error naming the key, not a yaml.scanner traceback.
    ("ingest.text_field=@body", "--set ingest.text_field: '@body' is not valid YAML"),
    ("ingest.text_field=`body`", "--set ingest.text_field: '`body`' is not valid YAML"),
    ("model.path=%models", "--set model.path: '%models' is not valid YAML"),
    # A number followed by ` #...` is taken whole, so it is a bad number rather than a silently cut one.
    ("chunking.token_budget=700 #x", "bad value for 'chunking.token_budget'"),
])
def test_refused_values(item, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[item])
    assert needle in str(err.value)


def test_accepted_values_next_to_refused_ones():
    cfg = load_config(overrides=["expert.stratify_by_source=yes", "ingest.text_field=body", "ingest.source_field=text",
                                 "spark.master=null", "program.max_rejected_per_chunk=3", "chunking.chars_per_token=2",
                                 "ingest.text_field='@body'"])
    assert cfg.expert.stratify_by_source is True
    assert (cfg.ingest.text_field, cfg.ingest.source_field, cfg.spark.master) == ("@body", "text", None)
    assert cfg.program.max_rejected_per_chunk == 3 and cfg.chunking.chars_per_token == 2.0


def test_yaml_reads_as_people_now_write_it(tmp_path):
    """YAML 1.2's core schema, in files and in --set alike: 1.1 made 010 eight, `no` false, 1:30 ninety."""
    (tmp_path / "site.yaml").write_text("distill:\n  seed: 010\ningest:\n  id_field: no\n")
    cfg = load_config(files=[tmp_path / "site.yaml"], overrides=["train.seed=0o10", "expert.seed=0x10",
                                                                 "ingest.source_field=1:30", "lake.path=on"])
    assert (cfg.distill.seed, cfg.train.seed, cfg.expert.seed) == (10, 8, 16)
    assert (cfg.ingest.id_field, cfg.ingest.source_field, cfg.lake.path) == ("no", "1:30", "on")
    assert load_config(overrides=["expert.stratify_by_source=false"]).expert.stratify_by_source is False
    assert load_config(overrides=["ingest.max_doc_chars=1e6"]).ingest.max_doc_chars == 1_000_000  # 1.1: text
    assert load_config(overrides=["lake.path=2024-01-01"]).lake.path == "2024-01-01"  # 1.1: a date
    with pytest.raises(ConfigError, match="'0b1' is no valid int"):  # an explicit tag on what is no int
        load_config(overrides=["distill.seed=!!int 0b1"])


@pytest.mark.parametrize("item, value", [
    ("train.output_dir=/data/my model #1", "/data/my model #1"),  # YAML would have cut it to '/data/my model'
    ("ingest.source_field=#src", "#src"),  # YAML would have read a comment only: null
    ("train.output_dir='/data/a #b'", "/data/a #b"),  # quoted: no comment, YAML's reading is kept
    ("train.output_dir=/data/a#b", "/data/a#b"),  # no space before '#': never a comment
])
def test_set_keeps_hash_text(item, value):
    key = item.partition("=")[0].split(".")
    cfg = load_config(overrides=[item])
    assert getattr(getattr(cfg, key[0]), key[1]) == value


def test_cli_config_error_is_one_line(capsys):
    from refinex_spark import cli
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--set", "ingest.text_field=@body", "ingest", "x.jsonl"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("refinex-spark: config error: --set ingest.text_field:") and err.count("\n") == 1


def test_cli_reports_delta_errors_in_one_line(monkeypatch, capsys):
    from deltalake.exceptions import DeltaError

    from refinex_spark import cli, runtime

    def fail(config, stage):
        raise DeltaError("Generic DeltaTable error: Object at location /x/_delta_log\nnot found")
    monkeypatch.setattr(runtime, "open_run", fail)
    assert cli.main(["ingest", "x.jsonl"]) == 1
    err = capsys.readouterr().err
    assert err == "refinex-spark ingest: error: Generic DeltaTable error: Object at location /x/_delta_log not found\n"


@pytest.mark.parametrize("argv, needle", [
    (["--fraction", "2"], "argument --fraction: must be a fraction in (0, 1], got 2"),
    (["--fraction", "0"], "argument --fraction: must be a fraction in (0, 1]"),
    (["--fraction", "nan"], "argument --fraction: must be a fraction in (0, 1]"),
    (["--fraction", "half"], "argument --fraction: expected a fraction"),
    (["--count", "0"], "argument --count: must be a positive integer, got 0"),
])
def test_cli_expert_sample_size_checked_before_spark(argv, needle, monkeypatch, capsys):
    from refinex_spark import cli, runtime

    def no_run(config, stage):
        raise AssertionError("Spark started before the arguments were checked")
    monkeypatch.setattr(runtime, "open_run", no_run)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["expert", "generate", *argv])
    assert exit_.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["--prefix", "--target"])
def test_an_installed_wheel_finds_its_configs_and_prompts(tmp_path, layout):
    """pip's --prefix and --target put the wheel's share/ outside sys.prefix: the environment files
    and prompt templates are still found (they were looked up under sys.prefix only)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(repo, src, ignore=shutil.ignore_patterns(".*", "tests", "notebooks", "build", "dist", "lake",
                                                             "*.egg-info", "__pycache__", "demo-data", "models"))
    run = lambda *args, **kw: subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)  # noqa: E731
    built = run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(tmp_path / "dist"), str(src))
    assert built.returncode == 0, built.stderr[-2000:]
    where = tmp_path / "installed"
    # --ignore-installed: pip would otherwise uninstall this environment's own (editable) install first
    done = run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
               layout, str(where), *map(str, (tmp_path / "dist").glob("*.whl")))
    assert done.returncode == 0, done.stderr[-2000:]
    site = where / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    probe = ("import refinex_spark.config as c; from refinex_spark.model.prompt import load_template; "
             "c.load_config(env='yarn'); load_template(); print(c.__file__); print(c.CONF_DIR)")
    got = run(sys.executable, "-c", probe, cwd=tmp_path, env={"PATH": "", "PYTHONPATH": str(site if layout == "--prefix" else where)})
    assert got.returncode == 0, got.stderr[-2000:]
    module, conf_dir = got.stdout.split()
    assert Path(module).is_relative_to(where) and Path(conf_dir) == where / "share" / "refinex-spark" / "conf"
    # This environment's own install is still there (pip had uninstalled it): the suite goes on with it.
    assert run(sys.executable, "-c", "import refinex_spark", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("item, key, expected", [
    ("model.revision=0123456", ("model", "revision"), "0123456"),  # a commit of digits keeps its leading 0
    ("train.base_revision=00", ("train", "base_revision"), "00"),
    ("model.revision=1234e56", ("model", "revision"), "1234e56"),  # not the float 1.234e+59
    ("lake.path=2024", ("lake", "path"), "2024"),
    ("chunking.token_budget=0700", ("chunking", "token_budget"), 700),  # a number setting still reads numbers
])
def test_a_text_setting_given_as_digits_is_taken_as_typed(item, key, expected):
    section, name = key
    assert getattr(getattr(load_config(overrides=[item]), section), name) == expected


def test_a_model_directory_may_start_at_home(monkeypatch, tmp_path):
    """`~` in model.path and train.base is the home directory, as in lake.path (it was refused as no
    directory and no hub id); hub ids are left alone."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(overrides=["model.path=~/models/refine", "train.base=~/bases/tiny"])
    assert (cfg.model.path, cfg.train.base) == (f"{tmp_path}/models/refine", f"{tmp_path}/bases/tiny")
    assert load_config(overrides=["train.base=Qwen/Qwen3-0.6B-Base"]).train.base == "Qwen/Qwen3-0.6B-Base"
