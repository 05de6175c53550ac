#!/bin/bash
# Run on the GPU machine from the repository root, with the folder `prepare` wrote as .gpu:
#   bash benchmarks/gpu_measure.sh .gpu OUT
# TVM's runtime (no compiler) and tvm-ffi come from that folder; torch is the machine's.
set -euo pipefail
folder=$1; out=$2
site=/tmp/structconv-site
mkdir -p "$site"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$folder"/whl/*.whl
tar xzf "$folder/runtime/tvm.tar.gz" -C "$site"
cudart=$(find /usr/local /opt /usr/lib -name 'libcudart.so.13*' 2>/dev/null | head -1 || true)
ffi=$(dirname "$(find "$site" -name 'libtvm_ffi.so' | head -1)")
export LD_LIBRARY_PATH="$ffi:$site/tvm/lib${cudart:+:$(dirname "$cudart")}:${LD_LIBRARY_PATH:-}"
export PYTHONPATH="$site:$PWD" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 benchmarks/gpu_speedup.py measure "$folder" --out "$out"
