#!/usr/bin/env bash
# Compile-only check of the CUDA kernel of multi-scale deformable attention
# (Deformable DETR eq. 3; VisionLLM sec. 3.2). Needs nvcc and the venv's torch
# headers, not a GPU: every ops/*.cu is compiled to an object file for sm_80 and
# sm_90 with the flags torch.utils.cpp_extension uses, then thrown away.
# C++20, not 17: torch >= 2.10 headers refuse to compile as C++17.
# Usage: bash ops/check_cuda.sh   (env: PYTHON, NVCC, CUDA_ARCHS="80 90")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
if [[ -z "${NVCC:-}" ]]; then
  if command -v nvcc >/dev/null 2>&1; then NVCC="$(command -v nvcc)"
  elif [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
  else echo "check_cuda: nvcc not found (set NVCC or CUDA_HOME)" >&2; exit 1; fi
fi

# torch guesses CUDA_HOME from nvcc's location and warns; name it instead.
if [[ -z "${CUDA_HOME:-}" ]]; then
  CUDA_HOME="$(cd "$(dirname "$NVCC")/.." && pwd)"
  [[ -f "$CUDA_HOME/include/cuda_runtime.h" ]] || CUDA_HOME=/usr/local/cuda
  export CUDA_HOME
fi

# Include dirs and C++ ABI exactly as torch reports them for extensions.
# (stderr dropped: torch warns that this machine has no CUDA runtime.)
mapfile -t torch_flags < <("$PYTHON" - 2>/dev/null <<'PY'
import torch
from torch.utils.cpp_extension import include_paths
for p in include_paths():
    print(f"-I{p}")
print(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
PY
)
if [[ ${#torch_flags[@]} -lt 2 ]]; then
  echo "check_cuda: could not import torch with $PYTHON" >&2
  "$PYTHON" -c "import torch" >&2 || true
  exit 1
fi

gencode=()
for arch in ${CUDA_ARCHS:-80 90}; do
  gencode+=("-gencode=arch=compute_${arch},code=sm_${arch}")
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "check_cuda: $("$NVCC" --version | tail -n 2 | head -n 1)"
status=0
for src in "$here"/*.cu; do
  obj="$tmp/$(basename "${src%.cu}").o"
  if "$NVCC" -std=c++20 -O2 -c "$src" -o "$obj" -I"$here" "${torch_flags[@]}" "${gencode[@]}" \
      -Xcompiler -fPIC --expt-relaxed-constexpr -DTORCH_EXTENSION_NAME=_C \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__; then
    echo "check_cuda: ok   $(basename "$src") -> $(stat -c %s "$obj") bytes (archs: ${CUDA_ARCHS:-80 90})"
  else
    echo "check_cuda: FAIL $(basename "$src")" >&2
    status=1
  fi
done
exit $status
