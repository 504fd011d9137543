#!/usr/bin/env bash
# refinex_spark: setup | test | demo | package. Every subcommand creates .venv first when needed.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"

setup() {
  if [ -f "$VENV/.installed" ] && [ "$VENV/.installed" -nt setup.cfg ]; then return; fi
  command -v java >/dev/null || { echo "Java 17 is required by Spark (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  # torch first, pinned: the local CPU wheel. Anything else would pull GBs of CUDA packages.
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e ".[spark,dev]"
  touch "$VENV/.installed"
}

case "${1:-}" in
  setup) setup ;;
  test)
    setup
    shift
    export PYSPARK_PYTHON="$PWD/$PY" PYSPARK_DRIVER_PYTHON="$PWD/$PY" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    "$PY" -m pytest -q "$@"
    ;;
  demo)
    setup
    shift
    export PYSPARK_PYTHON="$PWD/$PY" PYSPARK_DRIVER_PYTHON="$PWD/$PY" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    "$VENV/bin/refinex-spark" --env local --config conf/demo.yaml demo "$@"
    ;;
  package)
    setup
    # setuptools reuses build/lib: a module deleted from the tree would still ship.
    rm -rf dist build/lib build/bdist.* && mkdir -p dist
    "$PY" -m build --wheel --outdir dist .
    # A relocatable environment for spark-submit --archives dist/refinex-env.tar.gz#env (YARN).
    # venv-pack does not ship the interpreter: env/bin/python links to this python3, so every node
    # needs the same Python 3.11 at the same path (otherwise use conda-pack or a container image).
    # GPU executors need a CUDA build of torch: TORCH_SPEC="torch==2.13.0" on a CUDA index, and
    # EXTRAS=gpu for vLLM. The default is the CPU wheel this machine has.
    rm -rf build/pack-venv && python3 -m venv build/pack-venv
    build/pack-venv/bin/pip install -q --upgrade pip
    build/pack-venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
    # No pyspark in it: executors and the driver use the cluster's own (and its Delta jars').
    build/pack-venv/bin/pip install -q "$(ls dist/*.whl)${EXTRAS:+[$EXTRAS]}" venv-pack
    build/pack-venv/bin/venv-pack -p build/pack-venv -o dist/refinex-env.tar.gz --force -q
    ls -la dist
    ;;
  *)
    echo "usage: ./build.sh setup|test|demo|package" >&2
    exit 2
    ;;
esac
