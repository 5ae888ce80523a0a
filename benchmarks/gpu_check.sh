#!/usr/bin/env bash
# The checks that need a GPU, as one script (issue #12): the device tests on CUDA, the engine benchmark and the
# paper-scale cost table, with their JSON kept. Never part of CI or the test suite.
#   bash benchmarks/gpu_check.sh [PYTHON]      # on a machine with a CUDA GPU; results also copied to $OUT if set
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
export REPLICATIONS_DATA=${REPLICATIONS_DATA:-../shared/data}
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.cuda.get_device_name(0))'
"$PY" -m pytest -q -p no:cacheprovider tests/test_device.py tests/test_feddf.py tests/test_fedgen.py \
  tests/test_fedntd.py tests/test_gradient_dropping.py -k "device or cuda or gpu" 2>&1 | tail -5
"$PY" benchmarks/fl_engine.py --device cuda
"$PY" benchmarks/paper_scale.py --device cuda --max-seconds 120
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*.json "$OUT"/; fi
