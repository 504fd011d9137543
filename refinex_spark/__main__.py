"""`python -m refinex_spark STAGE [ARGS]`, the same as `refinex-spark STAGE [ARGS]`."""

import sys

from refinex_spark.cli import main

sys.exit(main())
