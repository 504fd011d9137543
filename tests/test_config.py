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
