#!/usr/bin/env bash
# The closing GPU-machine batch of a session: correctness of both backends (golden cases,
# equivalence with the CUDA variants, the large-buffer test, hostile inputs, compute-sanitizer),
# then `report --preset long` for both backends, the WGSL f16 shape, the opt-in CUDA variants,
# and the peers, all in one call. Bounded to fit one device call; results in $OUT/results.tar.gz.
#   here:  benches/device-prepare.sh
#   there: source .devbin/on-device.sh; bash benches/device-final.sh
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-} XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
o=device-out
rm -rf "$o" && mkdir -p "$o"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/results.tar.gz" "$o"; }
trap pack EXIT
B=.devbin/kvsparse
E=.devbin/test-equivalence
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
log() { printf '=== %s (%s)\n' "$*" "$(date -u +%T)"; }
body() {
  log verify; $B info >"$o/info.txt"; $B verify --golden tests/golden >"$o/verify.txt" 2>&1; tail -n 1 "$o/verify.txt"
  log equivalence; KVSPARSE_REQUIRE=wgpu,cuda $E >"$o/tests.txt" 2>&1; grep -E 'FAILED|^test result' "$o/tests.txt" | tail -n 5
  for v in DECODE_TUNE TOPK_TUNE; do
    log "equivalence cuda with KVSPARSE_CUDA_$v"; env "KVSPARSE_CUDA_$v=1" $E cuda:: >"$o/tests-$v.txt" 2>&1
    grep -E 'FAILED|^test result' "$o/tests-$v.txt" | tail -n 4
  done
  log wgpu_large; KVSPARSE_REQUIRE=wgpu .devbin/test-wgpu_large 2>&1 | grep -E 'FAILED|^test result'
  log hostile; .devbin/test-hostile --nocapture 2>&1 | grep -E 'tried|^test result' | tee "$o/hostile.txt"
  log sanitizer
  KVSPARSE_CASES=2 timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 $E cuda:: 2>&1 | tail -n 2 | tee "$o/san-memcheck.txt"
  for t in racecheck synccheck; do
    timeout 50 compute-sanitizer --tool $t --error-exitcode 9 $E cuda::golden 2>&1 | tail -n 2 | tee "$o/san-$t.txt"
  done
  r() {
    local n=$1 b=$2; shift 2; log "report $n $b $*"
    timeout 150 $B report "$@" --backend "$b" --out "$o/$n" >"$o/$n-$b.txt" 2>/dev/null
    grep -E '^(copy|kernel|decode   dense|decode   quest|decode   snapkv|prefill  dense|prefill  moba|compress)' "$o/$n-$b.txt" | grep -v ratplus
  }
  r long cuda --preset long --repeats 20
  r long wgpu --preset long --repeats 10
  r f16 wgpu --preset long --contexts 32768 --dtype f16 --repeats 10
  KVSPARSE_CUDA_DECODE_TUNE=1 KVSPARSE_CUDA_TOPK_TUNE=1 r tune cuda --preset long --contexts 131072 --repeats 20
  log peers; PYTHONUNBUFFERED=1 timeout 90 python3 benches/peers/peers.py "$o/peers.json" >"$o/peers.txt" 2>&1; cat "$o/peers.txt"
  python3 benches/peers/merge.py "$o/peers.json" "$o"/long/*.json "$o"/f16/*.json >"$o/merged.md" 2>&1
}
export -f body log >/dev/null 2>&1
timeout 560 bash -c "$(declare -f log body); B=$B E=$E o=$o; body"
