#!/usr/bin/env bash
# Builds compare_libxsmm.cpp for AVX2 and AVX-512 (where this CPU has it) against Debian's libxsmm
# (apt-get install libxsmm-dev) and runs each on 2 threads; prints one line per block size.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../../csrc/cpu"
out="${BUILD_DIR:-$here/../../build/block_products}"
mkdir -p "$out"
flags_avx2="-mavx2 -mfma -mf16c"
flags_avx512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
for isa in avx2 avx512; do
  if [ "$isa" = avx512 ] && ! grep -q avx512f /proc/cpuinfo; then echo "no AVX-512 here: $isa skipped"; continue; fi
  flags="flags_$isa"
  g++ -O3 -std=c++20 -fopenmp ${!flags} -DRIGL_SPARSE_ISA=$isa -I"$src" "$here/compare_libxsmm.cpp" \
    -o "$out/compare_libxsmm_$isa" -lxsmm -lxsmmnoblas -lpthread -ldl -lm
  arch=$([ "$isa" = avx2 ] && echo hsw || echo skx)
  "$out/compare_libxsmm_$isa" "$arch" "${1:-0.1}"
done
