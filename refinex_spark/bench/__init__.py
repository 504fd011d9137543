"""Benchmarks: `python -m refinex_spark.bench core|spark|refine`, each printing one JSON object."""
