# Shared by the benches/device-*.sh scripts (sourced, with the archive's name as $1): a fresh
# device-out/, packed into $OUT/$1 when the script exits, and `log` for section headers.
set -uo pipefail
out=device-out
rm -rf "$out" && mkdir -p "$out"
archive=$1
pack() { [ -n "${OUT:-}" ] && tar czf "$OUT/$archive" "$out"; }
trap pack EXIT
log() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)" | tee -a "$out/log.txt"; }
export KVSPARSE_REQUIRE=cuda
