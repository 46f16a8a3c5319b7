#!/usr/bin/env bash
# Decode-side changes validated and timed in one call on the GPU machine:
#   here:   bash benches/device-prepare.sh
#   there:  source .devbin/on-device.sh; bash benches/device-decode.sh [VARIANT ...]
# 1. golden cases (cuda), the CUDA equivalence suite (and 300 top-k cases a setting; both again
#    with KVSPARSE_CUDA_PDL=0, PDL being the default), the cache and decoder tests where carried,
#    hostile inputs;
# 2. report --preset paper at 32K and 128K (decode rows, top-k, scan) once per variant given as
#    an argument (a space-separated list of VAR=value settings, "" for the defaults), the list
#    twice in turn so that drift shows, then the graph timer once per variant;
# 3. the peers (SDPA decode and prefill, torch.topk, fla) in the same call;
# 4. ncu durations of the decode-side and top-k kernels over one 128K and one 32K report.
# DEVICE_FINAL=1 adds compute-sanitizer (memcheck and racecheck over the top-k cases, racecheck
# over Quest's), the long MoBA cases and `report --preset long` before the peers.
# Results in device-out/, packed into $OUT/decode.tar.gz.
source "$(dirname "$0")/device-lib.sh" decode.tar.gz
B=.devbin/kvsparse

log "golden, equivalence, hostile"
timeout 120 $B verify --golden tests/golden --backend cuda >"$out/verify.txt" 2>&1
tail -n 1 "$out/verify.txt" | tee -a "$out/log.txt"
grep -vE " pass$" "$out/verify.txt" | tail -n 5 | tee -a "$out/log.txt"
timeout 200 .devbin/test-equivalence cuda:: >"$out/eq.txt" 2>&1
grep -hE "test result|panicked|FAILED" "$out/eq.txt" | tail -n 8 | tee -a "$out/log.txt"
# Top-k: many more random rows (ties, -inf, long rows), also with every shape on the multi-CTA path.
KVSPARSE_CASES=300 timeout 150 .devbin/test-equivalence cuda::topk >"$out/eq-topk.txt" 2>&1
KVSPARSE_CUDA_TOPK_TUNE=1 KVSPARSE_CASES=300 timeout 150 .devbin/test-equivalence cuda::topk >>"$out/eq-topk.txt" 2>&1
grep -hE "test result|panicked|FAILED" "$out/eq-topk.txt" | tee -a "$out/log.txt"
# Programmatic dependent launch (the default on sm_90+) turned off: the top-k passes after the
# first and the decode's merge then wait for their predecessor to finish.
KVSPARSE_CUDA_PDL=0 KVSPARSE_CASES=300 timeout 150 .devbin/test-equivalence cuda::topk >"$out/eq-topk-pdl.txt" 2>&1
KVSPARSE_CUDA_PDL=0 timeout 200 .devbin/test-equivalence cuda:: >"$out/eq-pdl.txt" 2>&1
grep -hE "test result|panicked|FAILED" "$out/eq-topk-pdl.txt" "$out/eq-pdl.txt" | sed "s/^/PDL off: /" | tee -a "$out/log.txt"
# The ops whose selections go through block_select_row: 100 cases each.
for op in quest_decode snapkv_compress random_select moba_prefill; do
  KVSPARSE_CASES=100 timeout 120 .devbin/test-equivalence cuda::$op >"$out/eq-$op.txt" 2>&1
  grep -hE "test result|panicked|FAILED" "$out/eq-$op.txt" | sed "s/^/$op: /" | tee -a "$out/log.txt"
done
# Quest with one selection per kv head: the one-launch cluster kernel at each size, and the
# three launches it replaces.
for c in 1 16 8 0; do
  env KVSPARSE_CUDA_QUEST_CLUSTER=$c KVSPARSE_CASES=150 timeout 150 \
    .devbin/test-equivalence cuda::quest_decode_grouped >"$out/eq-quest-grouped-$c.txt" 2>&1
  grep -hE "test result|panicked|FAILED|case [0-9]+" "$out/eq-quest-grouped-$c.txt" | head -n 6 | sed "s/^/quest_decode_grouped, cluster $c: /" | tee -a "$out/log.txt"
done
KVSPARSE_CUDA_MOBA_ROUTE=0 KVSPARSE_CASES=100 timeout 120 .devbin/test-equivalence cuda::moba_prefill >"$out/eq-moba-route0.txt" 2>&1
grep -hE "test result|panicked|FAILED" "$out/eq-moba-route0.txt" | sed "s/^/moba_prefill, route off: /" | tee -a "$out/log.txt"
for t in cache_ops decoder; do
  [ -x .devbin/test-$t ] && timeout 100 .devbin/test-$t >"$out/$t.txt" 2>&1
  grep -hE "test result|panicked|FAILED" "$out/$t.txt" | tail -n 3 | sed "s/^/$t: /" | tee -a "$out/log.txt"
done
timeout 100 .devbin/test-hostile --nocapture >"$out/hostile.txt" 2>&1
grep -E "tried|test result" "$out/hostile.txt" | tee -a "$out/log.txt"

rows='^(copy|kernel|decode   dense +attention|decode   quest_kv +attention|decode   snapkv +attention)'
[ $# -eq 0 ] && set -- ""
n=0
for pass in 1 2; do
  for variant in "$@"; do
    n=$((n + 1))
    log "report paper 32K,128K, variant ${variant:-defaults} (pass $pass)"
    env $variant timeout 120 $B report --preset paper --contexts 32768,131072 \
      --repeats 30 --backend cuda --out "$out/r$n" >"$out/report-$n.txt" 2>/dev/null
    grep -E "$rows" "$out/report-$n.txt" | tee -a "$out/log.txt"
  done
done
n=0
for variant in "$@"; do
  n=$((n + 1))
  log "report paper 32K,128K, graph timer, variant ${variant:-defaults}"
  env $variant timeout 120 $B report --preset paper --contexts 32768,131072 --repeats 30 --backend cuda --timer graph \
    --out "$out/graph$n" >"$out/report-graph-$n.txt" 2>/dev/null
  grep -E "$rows" "$out/report-graph-$n.txt" | tee -a "$out/log.txt"
done

[ "${DEVICE_FINAL:-0}" = 1 ] && {
log "sanitizers over the top-k and Quest cases, the long MoBA cases"
# sanitize TOOL CASES OP [VAR=value]: compute-sanitizer over OP's equivalence cases.
sanitize() {
  env ${4:-} KVSPARSE_CASES=$2 timeout 150 compute-sanitizer --tool $1 --error-exitcode 9 .devbin/test-equivalence cuda::$3 \
    >"$out/$1-$3${4:+-${4%%=*}}.txt" 2>&1
  echo "$1 $3 ${4:-} -> rc $?" | tee -a "$out/log.txt"
}
sanitize memcheck 40 topk
sanitize racecheck 12 topk
sanitize racecheck 12 quest_decode
sanitize memcheck 12 quest_decode_grouped KVSPARSE_CUDA_QUEST_CLUSTER=1
sanitize racecheck 12 quest_decode_grouped KVSPARSE_CUDA_QUEST_CLUSTER=1
timeout 120 .devbin/test-cuda_large >"$out/large.txt" 2>&1
grep -hE "test result|panicked" "$out/large.txt" | tee -a "$out/log.txt"
log "report --preset long"
timeout 200 $B report --preset long --repeats 10 --backend cuda --out "$out/long" >"$out/report-long.txt" 2>/dev/null
grep -E "^(copy|kernel|decode   dense|decode   quest|decode   snapkv|prefill|compress)" "$out/report-long.txt" | grep -v ratplus | tee -a "$out/log.txt"
}

log peers
PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/peers.py "$out/peers.json" >"$out/peers.txt" 2>&1
cat "$out/peers.txt" | tee -a "$out/log.txt"

log "ncu: decode kernels"
for t in 131072 32768; do
  timeout 100 ncu --clock-control none --cache-control none \
    --kernel-name regex:"attention_decode|attention_merge|quest_select_kv|quest_decode_cluster|topk|select_blocks|snapkv" --launch-count 200 \
    --metrics gpu__time_duration.sum --csv \
    $B report --preset paper --contexts $t --repeats 3 --backend cuda --out "$out/ncu$t" >"$out/ncu-$t.csv" 2>"$out/ncu-$t.err"
  wc -l "$out/ncu-$t.csv" | tee -a "$out/log.txt"
done
