#!/usr/bin/env bash
# The GPU checks, in one go, on a CUDA machine that has torch, torchvision, numpy, pillow,
# pyarrow and fsspec but maybe not pycocotools (carry its wheel in .whl/) and no Ray or s3fs.
# Results go to $OUT (default: ./gpu-results): the CUDA tests' log and bench_gpu's JSON.
#   OUT=/tmp/gpu bash benchmarks/run_gpu_checks.sh [--images 48]
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# the package as pip installs it (pyproject maps the top-level schemas/ to mrcnn_batch.schemas)
OUT=$(realpath "$OUT")
rm -rf /tmp/checkout && cp -r . /tmp/checkout && cp -r schemas /tmp/checkout/mrcnn_batch/schemas && cd /tmp/checkout || exit 1
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
# the compiled mask kernel, as pip would build it (the torch ops run where this fails)
INC=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
gcc -O2 -ffp-contract=off -shared -fPIC -I"$INC" mrcnn_batch/encode/_paste.c -o "mrcnn_batch/encode/_paste$SUFFIX" -lm \
  || echo "the compiled mask kernel could not be built here: the torch ops encode" >&2
nvidia-smi -L
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'
# CUDA tests, and the encoder's exactness against this torch's CPU paste
timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_cuda.py tests/test_encode_masks.py} \
  2>&1 | tee "$OUT/cuda_tests.log" | tail -25
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/bench_gpu.py --out "$OUT/bench_gpu.json" "$@" 2>&1 | tee "$OUT/bench_gpu.log"
