#!/usr/bin/env bash
# Everything that belongs together on the GPU machine, in one call (see ../shared/device/README.md):
#   here:   ../shared/device/prepare.sh --features cuda
#   there:  source .devbin/on-device.sh; bash benches/device-run.sh [quick|long|paper] [steps]
#           REPORTS='--preset paper;--preset long --contexts 131072' picks several reports
# steps (default all): verify, tests, sanitize, report, peers. Results land in device-out/ and, packed
# as one file (the device tool returns at most 8 files), in $OUT/results.tar.gz.
set -uo pipefail
preset=${1:-long}
steps=${2:-verify,tests,sanitize,report,peers}
out=device-out
rm -rf "$out" && mkdir -p "$out"
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/results.tar.gz" "$out"; }
trap pack EXIT
has() { [[ ",$steps," == *",$1,"* ]]; }
log() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

log "info"
.devbin/kvsparse info 2>&1 | tee "$out/info.txt"

if has verify; then
  log "verify golden cases on every backend"
  .devbin/kvsparse verify --golden tests/golden 2>&1 | tee "$out/verify.txt" | grep -v ' pass$'
fi

if has tests; then
  log "equivalence suite (wgpu and cuda required)"
  KVSPARSE_REQUIRE=wgpu,cuda .devbin/test-equivalence 2>&1 | tee "$out/tests.txt" | grep -vE '\.\.\. ok$'
  log "hostile-input catalogue"
  .devbin/test-hostile --nocapture 2>&1 | tee "$out/hostile.txt" | grep -E 'inputs tried|test result|panicked'
fi

if has sanitize; then
  log "compute-sanitizer over the CUDA trials"
  for tool in memcheck racecheck synccheck; do
    KVSPARSE_CASES=3 timeout "${SANITIZE_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      --print-limit 20 .devbin/test-equivalence cuda:: 2>&1 | tail -n 25 | tee "$out/sanitizer-$tool.txt"
  done
fi

if has report; then
  # REPORTS: reports to run, separated by ';' (each: arguments to `kvsparse report`, run on cuda and wgpu).
  IFS=';' read -ra reports <<<"${REPORTS:---preset $preset}"
  i=0
  for args in "${reports[@]}"; do
    i=$((i + 1))
    for b in cuda wgpu; do
      log "report $args --backend $b"
      # shellcheck disable=SC2086
      timeout "${REPORT_TIMEOUT:-240}" .devbin/kvsparse report $args --backend "$b" --out "$out/r$i" 2>"$out/report-$i-$b.err" | tee "$out/report-$i-$b.txt"
      tail -n 2 "$out/report-$i-$b.err"
    done
  done
fi

if has peers; then
  log "peers (PyTorch SDPA, torch.topk, fla-core chunk_hgrn)"
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  PYTHONUNBUFFERED=1 python3 benches/peers/peers.py "$out/peers.json"
  python3 benches/peers/merge.py "$out/peers.json" "$out"/r*/report-*.json | tee "$out/merged.md"
fi
