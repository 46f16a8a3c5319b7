#!/usr/bin/env bash
# MoBA's CUDA paths and the module loading, validated and timed in one call on the GPU machine
# (cuda/PERF.md, "MoBA key-block-major"; BENCHMARKS run 35 for the first measurements):
#   here:   bash benches/device-prepare.sh
#   there:  source .devbin/on-device.sh; bash benches/device-moba.sh
# 1. first-process cost on this fresh machine, driver cache off: CUBIN (default) against PTX;
# 2. the opt-in kernels against the reference: bucket runs (KVSPARSE_CUDA_MOBA_RUN) and the
#    tensor-core gate (KVSPARSE_CUDA_MOBA_GATE=mma), long cases and 40 random cases a dtype;
# 3. MoBA at 32K for every path (union, buckets with R = 1, 4, 8, each gate) in the same call;
# 4. ncu durations of the MoBA kernels for the fastest combination.
# Results land in device-out/ and, packed, in $OUT/moba.tar.gz.
set -uo pipefail
out=device-out
rm -rf "$out" && mkdir -p "$out"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/moba.tar.gz" "$out"; }
trap pack EXIT
log() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)" | tee -a "$out/log.txt"; }
timed() {
  local t0 rc
  t0=$(date +%s%N)
  "$@"
  rc=$?
  echo "$* -> rc $rc, $((($(date +%s%N) - t0) / 1000000)) ms" | tee -a "$out/log.txt"
}
export KVSPARSE_REQUIRE=cuda

log "first process, driver JIT cache off: CUBIN, then PTX"
CUDA_CACHE_DISABLE=1 timed timeout 300 .devbin/test-cuda_large >"$out/first-cubin.txt" 2>&1
tail -n 1 "$out/first-cubin.txt" | tee -a "$out/log.txt"
CUDA_CACHE_DISABLE=1 KVSPARSE_CUDA_PTX=1 timed timeout 300 .devbin/test-cuda_large >"$out/first-ptx.txt" 2>&1
tail -n 1 "$out/first-ptx.txt" | tee -a "$out/log.txt"

log "opt-in kernels against the reference"
opt="KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_RUN=8 KVSPARSE_CUDA_MOBA_GATE=mma"
env $opt timeout 300 .devbin/test-cuda_large >"$out/large-optin.txt" 2>&1
env $opt KVSPARSE_CUDA_MOBA_WORKSPACE=20000000 timeout 300 .devbin/test-cuda_large >>"$out/large-optin.txt" 2>&1
env $opt KVSPARSE_CASES=40 timeout 300 .devbin/test-equivalence cuda::moba >"$out/eq-optin.txt" 2>&1
grep -hE "test result|panicked|outside" "$out/large-optin.txt" "$out/eq-optin.txt" | tee -a "$out/log.txt"

log "MoBA at 32K, every path"
for combo in "KVSPARSE_CUDA_MOBA=union" "KVSPARSE_CUDA_MOBA=buckets" \
  "KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_RUN=4" "KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_RUN=8" \
  "KVSPARSE_CUDA_MOBA=union KVSPARSE_CUDA_MOBA_GATE=mma" \
  "KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_RUN=8 KVSPARSE_CUDA_MOBA_GATE=mma"; do
  name=$(echo "$combo" | sed 's/KVSPARSE_CUDA_MOBA//g; s/[ =]/_/g')
  env $combo timeout 240 .devbin/kvsparse report --preset long --contexts 32768 --repeats 5 --backend cuda \
    >"$out/report$name.txt" 2>/dev/null
  echo "$combo" | tee -a "$out/log.txt"
  grep -E "prefill +(dense|moba) +attention" "$out/report$name.txt" | tee -a "$out/log.txt"
done

log "ncu: the MoBA kernels, buckets with runs of 8 and the tensor-core gate"
env KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_RUN=8 KVSPARSE_CUDA_MOBA_GATE=mma timeout 300 \
  ncu --clock-control none --cache-control all \
  --kernel-name regex:"moba_|attention_bucket|select_blocks|block_mean_f32" --launch-count 120 \
  --metrics gpu__time_duration.sum --csv \
  .devbin/kvsparse report --preset long --contexts 32768 --repeats 1 --backend cuda >"$out/ncu.csv" 2>"$out/ncu.err"
wc -l "$out/ncu.csv" | tee -a "$out/log.txt"
