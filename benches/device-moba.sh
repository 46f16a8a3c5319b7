#!/usr/bin/env bash
# MoBA's CUDA paths and the compiled-module store, validated and timed in one call on the GPU
# machine (cuda/PERF.md, "MoBA key-block-major"; BENCHMARKS runs 35-37):
#   here:   bash benches/device-prepare.sh
#   there:  source .devbin/on-device.sh; bash benches/device-moba.sh [quick|final]
# `quick` (a kernel change to validate and time, nothing else): step 2 without the hostile inputs,
# step 3 at 32K only, step 4; no step 1. `final` (a session's closing call): steps 2-4 in full,
# plus compute-sanitizer memcheck over the long MoBA cases; no step 1.
# 1. the module store: a test binary's first process with an empty store (driver JIT cache off),
#    then the same binary again with the store filled; KVSPARSE_CUDA_LOG=1 names each module's
#    source (store or NVRTC) and its compile and load seconds;
# 2. the defaults against the golden cases, the CUDA equivalence suite, 200 random MoBA cases a
#    dtype, the long MoBA cases on each path (and with a small workspace), hostile inputs;
# 3. report --preset long (32K and 128K) with the defaults; MoBA at 32K on the union kernel and
#    with an 8 GiB bucket workspace (fewer, larger passes);
# 4. ncu durations of MoBA's kernels at every budget of one 32K report.
# Results land in device-out/ and, packed, in $OUT/moba.tar.gz.
source "$(dirname "$0")/device-lib.sh" moba.tar.gz
timed() {
  local t0 rc
  t0=$(date +%s%N)
  "$@"
  rc=$?
  echo "$* -> rc $rc, $((($(date +%s%N) - t0) / 1000000)) ms" | tee -a "$out/log.txt"
}
mode=${1:-full}
quick=$([ "$mode" = quick ] && echo 1 || echo 0)
store=$(mktemp -d)
export KVSPARSE_CACHE_DIR=$store

[ "$mode" = full ] && {
log "module store: empty, then filled (driver JIT cache off both times)"
CUDA_CACHE_DISABLE=1 KVSPARSE_CUDA_LOG=1 timed timeout 240 .devbin/test-cuda_large >"$out/store-cold.txt" 2>&1
CUDA_CACHE_DISABLE=1 KVSPARSE_CUDA_LOG=1 timed timeout 240 .devbin/test-cuda_large >"$out/store-warm.txt" 2>&1
grep -hE "test result|panicked" "$out/store-cold.txt" "$out/store-warm.txt" | tee -a "$out/log.txt"
ls "$store" | wc -l | sed 's/^/modules stored: /' | tee -a "$out/log.txt"
}

log "defaults against the golden cases and the reference"
timeout 120 .devbin/kvsparse verify --golden tests/golden --backend cuda >"$out/verify.txt" 2>&1
tail -n 1 "$out/verify.txt" | tee -a "$out/log.txt"
grep -vE " pass$" "$out/verify.txt" | tail -n 5 | tee -a "$out/log.txt"
timed timeout 200 .devbin/test-equivalence cuda:: >"$out/eq-default.txt" 2>&1
grep -hE "test result|panicked|FAILED" "$out/eq-default.txt" | tail -n 8 | tee -a "$out/log.txt"
KVSPARSE_CASES=200 timeout 150 .devbin/test-equivalence cuda::moba >"$out/eq-moba200.txt" 2>&1
for combo in "KVSPARSE_CUDA_MOBA=buckets" "KVSPARSE_CUDA_MOBA=union" \
  "KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_WORKSPACE=20000000" "KVSPARSE_CUDA_MOBA=buckets KVSPARSE_CUDA_MOBA_RUN=1"; do
  echo "== $combo" >>"$out/large.txt"
  env $combo timeout 120 .devbin/test-cuda_large >>"$out/large.txt" 2>&1
done
grep -hE "test result|panicked|outside|==" "$out/eq-moba200.txt" "$out/large.txt" | tee -a "$out/log.txt"
[ "$quick" = 1 ] || {
timeout 120 .devbin/test-hostile --nocapture >"$out/hostile.txt" 2>&1
grep -E "tried|test result" "$out/hostile.txt" | tee -a "$out/log.txt"
}
[ "$mode" = final ] && {
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 .devbin/test-cuda_large >"$out/memcheck-moba.txt" 2>&1
echo "memcheck test-cuda_large -> rc $?" | tee -a "$out/log.txt"
tail -n 2 "$out/memcheck-moba.txt" | tee -a "$out/log.txt"
}

log "report --preset long, defaults; MoBA at 32K on the union kernel"
contexts=$([ "$quick" = 1 ] && echo 32768 || echo 32768,131072)
timeout 200 .devbin/kvsparse report --preset long --contexts "$contexts" --repeats 10 --backend cuda --out "$out/long" \
  >"$out/report-long.txt" 2>/dev/null
grep -E "^(copy|kernel|decode   dense|decode   quest|decode   snapkv|prefill|compress)" "$out/report-long.txt" | grep -v ratplus | tee -a "$out/log.txt"
KVSPARSE_CUDA_MOBA=union timeout 120 .devbin/kvsparse report --preset long --contexts 32768 --repeats 5 --backend cuda \
  --out "$out/union" >"$out/report-union.txt" 2>/dev/null
grep -E "prefill +(dense|moba) +attention" "$out/report-union.txt" | tee -a "$out/log.txt"
echo "KVSPARSE_CUDA_MOBA_ROUTE=0 (separate gate and selection)" | tee -a "$out/log.txt"
KVSPARSE_CUDA_MOBA_ROUTE=0 timeout 120 .devbin/kvsparse report --preset long --contexts 32768 --repeats 5 --backend cuda \
  --out "$out/route0" >"$out/report-route0.txt" 2>/dev/null
grep -E "prefill +(dense|moba) +attention" "$out/report-route0.txt" | tee -a "$out/log.txt"
[ "$mode" = full ] && {
echo "KVSPARSE_CUDA_MOBA_WORKSPACE=8 GiB" | tee -a "$out/log.txt"
KVSPARSE_CUDA_MOBA_WORKSPACE=8589934592 timeout 120 .devbin/kvsparse report --preset long --contexts 32768 --repeats 5 \
  --backend cuda --out "$out/ws8g" >"$out/report-ws8g.txt" 2>/dev/null
grep -E "prefill +(dense|moba) +attention" "$out/report-ws8g.txt" | tee -a "$out/log.txt"
}

log "ncu: MoBA's kernels at 32K"
timeout 200 ncu --clock-control none --cache-control all \
  --kernel-name regex:"moba_|attention_bucket|attention_blocks|select_blocks|block_mean_f32" --launch-count $([ "$mode" = full ] && echo 400 || echo 60) \
  --metrics gpu__time_duration.sum --csv \
  .devbin/kvsparse report --preset long --contexts 32768 --repeats 1 --backend cuda --out "$out/ncu" >"$out/ncu.csv" 2>"$out/ncu.err"
wc -l "$out/ncu.csv" | tee -a "$out/log.txt"
