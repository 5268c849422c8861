#!/usr/bin/env bash
# Build coda-asr with candle's CUDA back-end on a machine with no GPU and no CUDA toolkit.
#
# NVIDIA's PyPI wheels provide the toolkit: nvcc + cicc (nvvm) + headers + the libraries the
# binary links against (runtime, cuBLAS, cuRAND, NVRTC). They go into .cache/cuda (not the
# system), and the build goes to target-cuda/release/coda-asr, next to the CPU build.
#
# The toolkit is CUDA 13.0, the oldest CUDA 13: the PTX it emits loads on any driver that runs
# CUDA 13 (PyTorch's cu130 wheels need the same), and cudarc is told to use the 13.0 API.
# The driver library (libcuda.so.1) only exists where a GPU is; for linking here a stub with
# the same soname is generated from the symbols the build asks for.
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200) is the architecture candle's
# statically compiled kernels target; PTX kernels are JIT-compiled for the card at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR=$PWD
CUDA_CACHE=$ROOT_DIR/.cache/cuda
SITE=$CUDA_CACHE/site
CUDA=$SITE/nvidia/cu13
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

if [ ! -x "$CUDA/bin/nvcc" ]; then
  echo "== installing the CUDA 13.0 toolkit wheels into $SITE"
  python3 -m pip install --quiet --no-deps --target "$SITE" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
fi

# Unversioned names for the linker (the wheels ship only the sonames).
mkdir -p "$CUDA_CACHE/lib"
for lib in "$CUDA"/lib/lib*.so.*; do
  base=$(basename "$lib")
  ln -sf "$lib" "$CUDA_CACHE/lib/${base%%.so.*}.so"
done

# Driver API stub: every cu* symbol cudarc's driver bindings name, as an empty function, in a
# library whose soname is libcuda.so.1, so the real driver is the one loaded at run time.
if [ ! -f "$CUDA_CACHE/lib/libcuda.so" ]; then
  echo "== generating the libcuda.so link stub"
  CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)
  grep -hoE 'pub unsafe fn cu[A-Za-z0-9_]+' "$CUDARC_SRC/src/driver/sys/mod.rs" | sed 's/pub unsafe fn //' | sort -u |
    awk '{print "void " $1 "(void) {}"}' > "$CUDA_CACHE/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA_CACHE/lib/libcuda.so" "$CUDA_CACHE/cuda_stub.c"
fi

export CUDA_ROOT=$CUDA CUDA_PATH=$CUDA CUDA_HOME=$CUDA
export CUDARC_CUDA_VERSION=13000
export PATH=$CUDA/bin:$PATH
export LIBRARY_PATH=$CUDA_CACHE/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
export CPATH=$CUDA/include:$CUDA/include/cccl${CPATH:+:$CPATH}
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$CUDA/include -I$CUDA/include/cccl"
nvcc --version | tail -2
echo "== cargo build --release --features cuda (compute capability $CUDA_COMPUTE_CAP)"
cargo build --release --features cuda --target-dir target-cuda
echo "built target-cuda/release/coda-asr; on a GPU machine run it with the CUDA 13 libraries on LD_LIBRARY_PATH"
