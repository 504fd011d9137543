"""refinex_spark: RefineX-style deletion-program refinement of LLM pre-training corpora on Spark and Delta Lake."""

__version__ = "0.1.0"
