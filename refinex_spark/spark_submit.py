"""The spark-submit entry point: a file, since spark-submit runs files, not console scripts.

    spark-submit [spark options] .../refinex_spark/spark_submit.py STAGE [ARGS]

is `refinex-spark STAGE [ARGS]` inside the submitted application (the session spark-submit
configured is the one the stage uses). Absolute imports only: the file runs as __main__.
"""

import sys

from refinex_spark.cli import main

if __name__ == "__main__":
    sys.exit(main())
