#!/usr/bin/env bash
# Builds what the GPU machine runs, small enough to travel (the working tree may carry 64 MiB):
# ../shared/device/prepare.sh, then keep only the binaries benches/device-run.sh uses, stripped.
# (prepare.sh names the first `kvsparse` artifact it sees, which can be the bin's unit-test
# harness: the real CLI is copied from target/release.)
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
../shared/device/prepare.sh --features cuda "$@" >/tmp/kvsparse-prepare.log 2>&1 || { tail -30 /tmp/kvsparse-prepare.log; exit 1; }
cp "${CARGO_TARGET_DIR:-target}/release/kvsparse" .devbin/kvsparse
find .devbin -type f ! -name on-device.sh ! -name kvsparse ! -name test-equivalence ! -name test-hostile ! -name test-wgpu_large ! -name test-cuda_large ! -name test-cache_ops ! -name test-decoder ! -name decoder ! -name bench-methods ! -name decode_sweep -delete
strip --strip-debug .devbin/kvsparse .devbin/test-* .devbin/bench-*
du -sh .devbin .gl
