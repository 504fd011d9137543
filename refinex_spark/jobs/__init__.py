"""One thin module per pipeline stage: each maps the pure core over Spark partitions and commits to the lake."""
