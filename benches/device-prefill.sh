#!/usr/bin/env bash
# Dense prefill's two tensor-core kernels validated and timed in one call on the GPU machine:
#   here:   bash benches/device-prepare.sh
#   there:  source .devbin/on-device.sh; bash benches/device-prefill.sh [VARIANT ...]
# DEVICE_STEPS (default "check time wgpu") picks the steps below: check = 1, time = 2-4, wgpu =
# 5. All three run past one call's 10 minutes: give "check time" to one call, "wgpu" to the
# next.
# 1. golden cases, the dense-attention equivalence cases (200) and the long prefill cases of
#    test-cuda_large for each variant (a space-separated list of VAR=value settings; default: the
#    64-row kernel, KVSPARSE_CUDA_PREFILL_WIDE=0, and the 128-row default); memcheck and racecheck over the last variant;
# 2. report --preset long at 32K once per variant, the list twice in turn so that drift shows;
# 3. SDPA's prefill (peers.py) in the same call;
# 4. ncu sections of one 32K prefill launch per variant, and the wide kernel's local-memory
#    instructions in its SASS;
# 5. wgpu: the report's copy ceiling as a compute pass (the default) and as a buffer-to-buffer
#    copy (KVSPARSE_WGPU_BUFFER_COPY=1), with the 128K decode rows, and the decoder test (its
#    state copies go through copy_buffer) on every backend.
# Results in device-out/, packed into $OUT/prefill.tar.gz.
source "$(dirname "$0")/device-lib.sh" prefill.tar.gz
B=.devbin/kvsparse
export KVSPARSE_CACHE_DIR=/tmp/kvs-store
[ $# -eq 0 ] && set -- "KVSPARSE_CUDA_PREFILL_WIDE=0" "KVSPARSE_CUDA_PREFILL_WIDE=1"
steps=" ${DEVICE_STEPS:-check time wgpu} "
step_on() { [[ "$steps" == *" $1 "* ]]; }

step_on check && {
log "golden, dense equivalence, long prefill cases"
n=0
for variant in "$@"; do
  n=$((n + 1))
  env $variant timeout 120 $B verify --golden tests/golden --backend cuda >"$out/verify-$n.txt" 2>&1
  tail -n 1 "$out/verify-$n.txt" | sed "s/^/$variant: /" | tee -a "$out/log.txt"
  grep -vE " pass$" "$out/verify-$n.txt" | tail -n 5 | tee -a "$out/log.txt"
  env $variant KVSPARSE_CASES=200 timeout 150 .devbin/test-equivalence cuda::attention_dense >"$out/eq-$n.txt" 2>&1
  grep -hE "test result|panicked|FAILED" "$out/eq-$n.txt" | sed "s/^/$variant: /" | tee -a "$out/log.txt"
  env $variant timeout 150 .devbin/test-cuda_large long_dense >"$out/large-$n.txt" 2>&1
  grep -hE "test result|panicked|outside" "$out/large-$n.txt" | head -n 6 | sed "s/^/$variant: /" | tee -a "$out/log.txt"
done
last=${!#}
for tool in memcheck racecheck; do
  env $last KVSPARSE_CASES=12 timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 \
    .devbin/test-equivalence cuda::attention_dense >"$out/$tool.txt" 2>&1
  echo "$tool attention_dense $last -> rc $?" | tee -a "$out/log.txt"
  tail -n 2 "$out/$tool.txt" | tee -a "$out/log.txt"
done
}

step_on time && {
rows='^(copy|prefill  dense|prefill  moba|compress)'
n=0
for pass in 1 2; do
  for variant in "$@"; do
    n=$((n + 1))
    log "report long 32K, ${variant:-defaults} (pass $pass)"
    env $variant timeout 150 $B report --preset long --contexts 32768 --repeats 10 --backend cuda \
      --out "$out/r$n" >"$out/report-$n.txt" 2>/dev/null
    grep -E "$rows" "$out/report-$n.txt" | tee -a "$out/log.txt"
  done
done

log peers
PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/peers.py "$out/peers.json" >"$out/peers.txt" 2>&1
grep -E "device|copy|prefill" "$out/peers.txt" | tee -a "$out/log.txt"

log "ncu: one 32K prefill launch per variant"
sections="--section LaunchStats --section Occupancy --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats --section WarpStateStats"
n=0
for variant in "$@"; do
  n=$((n + 1))
  env $variant timeout 200 ncu --clock-control none $sections --kernel-name regex:"attention_prefill_mma" \
    --launch-skip 1 --launch-count 1 $B report --preset long --contexts 32768 --repeats 1 --backend cuda \
    --out "$out/ncu$n" >"$out/ncu-$n.txt" 2>&1
  echo "== $variant" | tee -a "$out/log.txt"
  grep -E "attention_prefill|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Memory Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|DRAM Throughput|Compute \(SM\)|Issue Slots Busy|Warp Cycles Per Issued|Dynamic Shared|Local" "$out/ncu-$n.txt" | head -40 | tee -a "$out/log.txt"
done
log "SASS of the wide kernel: local memory and the main loop's instruction mix"
for f in "$KVSPARSE_CACHE_DIR"/*; do
  if cuobjdump -sass "$f" 2>/dev/null | grep -q "attention_prefill_mma_wide"; then
    cuobjdump -sass -fun attention_prefill_mma_wide "$f" >"$out/wide.sass" 2>&1
    cuobjdump -sass -fun attention_prefill_mma "$f" >"$out/narrow.sass" 2>&1
  fi
done
for s in wide narrow; do
  [ -f "$out/$s.sass" ] && echo "$s: $(grep -cE 'STL|LDL' "$out/$s.sass") local-memory instructions, $(grep -c HMMA "$out/$s.sass") HMMA, $(grep -c LDSM "$out/$s.sass") LDSM, $(grep -c MUFU.EX2 "$out/$s.sass") MUFU.EX2" | tee -a "$out/log.txt"
done
}

step_on wgpu && {
log "wgpu: the copy as a compute pass and as a buffer copy; the decoder test"
n=0
for variant in "KVSPARSE_WGPU_BUFFER_COPY=0" "KVSPARSE_WGPU_BUFFER_COPY=1"; do
  n=$((n + 1))
  env $variant KVSPARSE_REQUIRE=wgpu timeout 240 $B report --preset paper --contexts 4096,131072 --dtype f16 \
    --backend wgpu --repeats 10 --out "$out/wgpu$n" >"$out/report-wgpu-$n.txt" 2>"$out/report-wgpu-$n.err"
  echo "== $variant -> rc $?" | tee -a "$out/log.txt"
  grep -E "^(copy|decode   dense +attention|decode   quest_kv +attention|decode   snapkv +attention)" \
    "$out/report-wgpu-$n.txt" | tee -a "$out/log.txt"
done
[ -x .devbin/test-decoder ] && {
  KVSPARSE_REQUIRE=wgpu,cuda timeout 150 .devbin/test-decoder >"$out/decoder.txt" 2>&1
  grep -hE "test result|panicked|FAILED" "$out/decoder.txt" | tail -n 3 | sed "s/^/decoder: /" | tee -a "$out/log.txt"
}
}
:  # the steps not asked for leave a false status behind
