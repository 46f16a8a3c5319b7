#!/usr/bin/env bash
# wgpu against CUDA on the same card, in one call (BENCHMARKS, session 10):
#   here:   bash benches/device-prepare.sh; optionally a build of an earlier commit's CLI copied
#           to .devbin/kvsparse-before (strip it: the tree travels in 64 MiB)
#   there:  source .devbin/on-device.sh; bash benches/device-wgpu.sh
# 1. wgpu on the NVIDIA Vulkan driver: golden cases and the wgpu equivalence suite, and the
#    attention and Quest cases again with 4 keys a decode step, test-wgpu_large and test-decoder
#    where carried;
# 2. report --preset paper at 32K and 128K on wgpu (f16): this build, the earlier build when
#    carried, this build again (drift); then the decode's knobs (KVSPARSE_WGPU_DECODE_TEAM=8
#    and 32, KVSPARSE_WGPU_DECODE_WORKGROUPS=512 and 1024), then f32 and bf16 storage;
# 3. the same reports on CUDA (f16, f32, bf16) for the wgpu/CUDA ratios; the dense decode over
#    a grid of shapes on both (examples/decode_sweep.rs, where carried);
# all the while nvidia-smi logs the SM and memory clocks every 100 ms (clocks.csv).
# Results in device-out/, packed into $OUT/wgpu.tar.gz.
source "$(dirname "$0")/device-lib.sh" wgpu.tar.gz
B=.devbin/kvsparse
unset KVSPARSE_REQUIRE
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,pstate,power.draw,utilization.gpu --format=csv -lms 100 \
  >"$out/clocks.csv" 2>&1 &
smi=$!

log "wgpu on the NVIDIA driver: golden, equivalence"
KVSPARSE_REQUIRE=wgpu timeout 120 $B verify --golden tests/golden --backend wgpu >"$out/verify-wgpu.txt" 2>&1
tail -n 1 "$out/verify-wgpu.txt" | sed "s/^/wgpu golden: /" | tee -a "$out/log.txt"
grep -vE " pass$" "$out/verify-wgpu.txt" | tail -n 5 | tee -a "$out/log.txt"
KVSPARSE_REQUIRE=wgpu timeout 200 .devbin/test-equivalence wgpu:: >"$out/eq-wgpu.txt" 2>&1
for op in attention quest snapkv; do
  KVSPARSE_WGPU_DECODE_KB=4 KVSPARSE_REQUIRE=wgpu timeout 100 .devbin/test-equivalence wgpu::$op >>"$out/eq-wgpu.txt" 2>&1
done
for t in wgpu_large decoder; do
  [ -x .devbin/test-$t ] && KVSPARSE_REQUIRE=wgpu timeout 150 .devbin/test-$t >>"$out/eq-wgpu.txt" 2>&1
done
grep -hE "test result|panicked|FAILED" "$out/eq-wgpu.txt" | tee -a "$out/log.txt"

rows='^(copy|kernel|decode   dense +attention|decode   quest_kv +attention|decode   snapkv +attention|decode   random +attention)'
# report NAME CLI DTYPE [VAR=value ...]: the paper rows at 32K and 128K on wgpu.
report() {
  local name=$1 cli=$2 dtype=$3
  shift 3
  log "wgpu report paper 32K,128K, $dtype: $name $*"
  env "$@" KVSPARSE_REQUIRE=wgpu timeout 150 $cli report --preset paper --contexts 32768,131072 --dtype $dtype \
    --backend wgpu --repeats 10 --out "$out/w-$name" >"$out/report-wgpu-$name.txt" 2>/dev/null
  grep -E "$rows" "$out/report-wgpu-$name.txt" | tee -a "$out/log.txt"
}
report this $B f16 KVSPARSE_WGPU_DECODE_KB=2
[ -x .devbin/kvsparse-before ] && report before .devbin/kvsparse-before f16 KVSPARSE_WGPU_DECODE_KB=2
report this-again $B f16 KVSPARSE_WGPU_DECODE_KB=2
for knob in KVSPARSE_WGPU_DECODE_TEAM=8 KVSPARSE_WGPU_DECODE_TEAM=32 KVSPARSE_WGPU_DECODE_WORKGROUPS=512 \
  KVSPARSE_WGPU_DECODE_WORKGROUPS=1024; do
  name=${knob##*_}
  report "${name/=/-}" $B f16 "$knob"
done
report f32 $B f32 KVSPARSE_WGPU_DECODE_KB=2
report bf16 $B bf16 KVSPARSE_WGPU_DECODE_KB=2

for dtype in f16 f32 bf16; do
  log "cuda report paper 32K,128K, $dtype"
  KVSPARSE_REQUIRE=cuda timeout 120 $B report --preset paper --contexts 32768,131072 --dtype $dtype --backend cuda \
    --repeats 10 --out "$out/c-$dtype" >"$out/report-cuda-$dtype.txt" 2>/dev/null
  grep -E "$rows" "$out/report-cuda-$dtype.txt" | tee -a "$out/log.txt"
done
[ -x .devbin/decode_sweep ] && for backend in wgpu cuda; do
  log "decode_sweep $backend f16"
  timeout 150 .devbin/decode_sweep $backend f16 2>&1 | tee "$out/sweep-$backend.txt" | tee -a "$out/log.txt" >/dev/null
done
kill $smi
log "SM clocks while it ran (MHz: samples)"
cut -d, -f2 "$out/clocks.csv" | sort | uniq -c | sort -rn | head -n 6 | tee -a "$out/log.txt"
