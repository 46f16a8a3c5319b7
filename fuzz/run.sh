#!/usr/bin/env bash
# Bounded fuzzing of the golden loader (issue: hostile inputs). Needs nightly and cargo-fuzz:
#   rustup toolchain install nightly && cargo +nightly install cargo-fuzz
# usage: fuzz/run.sh [seconds]   (default 60); seeds the corpus with the golden cases.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
mkdir -p corpus/golden_loader
cp ../tests/golden/*.safetensors corpus/golden_loader/
cargo +nightly fuzz run golden_loader corpus/golden_loader -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 12
