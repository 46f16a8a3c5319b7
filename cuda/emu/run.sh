#!/usr/bin/env bash
# The CUDA attention kernels (tensor-core prefill; grouped decode on CUDA cores and on tensor
# cores, with its merge; the CUDA-core attention_dense) checked on the CPU under the host
# emulation (cuda/emu/emu.h; prefill_check.cpp, decode_check.cpp, dense_check.cpp), for when no
# GPU is at hand: a logic check of indexing, masking and fragment layouts against a float64
# reference, not a substitute for the GPU runs (no timing, no memory model, cp.async synchronous).
#   bash cuda/emu/run.sh [SEED]
# Needs NVRTC (as CI installs it) only to assemble the modules: they are dumped by the
# cuda_compile test (KVSPARSE_DUMP_PTX), then rewritten by prep.py and built with g++.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
work=${EMU_WORK:-/tmp/kvsparse-emu}
# NVRTC from the nvidia-cuda-nvrtc-cu12 wheel when none is on the library path (as .ci/run does).
nvrtc_lib=$(python3 -c 'import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], "lib"))' 2>/dev/null || true)
[ -n "$nvrtc_lib" ] && export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p "$work"
if [ "${EMU_REUSE_DUMP:-0}" != 1 ] || [ ! -f "$work/dump/attention_bf16_dpl4_sm_90.cu" ]; then
  rm -rf "$work/dump"
  KVSPARSE_DUMP_PTX="$work/dump" KVSPARSE_REQUIRE=nvrtc cargo test -q --release --features cuda \
    --test cuda_compile every_kernel_compiles_for_sm90 >"$work/dump.log" 2>&1 || { tail -20 "$work/dump.log"; exit 1; }
fi
status=0
for m in ${EMU_MODULES:-attention_bf16_dpl4 attention_f16_dpl2 attention_f16_dpl4 attention_bf16_dpl2 attention_f32_dpl4}; do
  python3 cuda/emu/prep.py "$work/dump/${m}_sm_90.cu" "$work/$m.cpp"
  # f32 modules have no tensor-core kernels: no prefill_check, and decode_check runs
  # attention_decode_g* only.
  checks="prefill decode dense"
  case $m in *f32*) checks="decode dense" ;; esac
  pids=()
  for check in $checks; do
    g++ -std=c++17 -O2 -w -Icuda/emu -DEMU_MODULE="\"$work/$m.cpp\"" "cuda/emu/${check}_check.cpp" -o "$work/$m-$check" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "== $m"
  for check in $checks; do
    "$work/$m-$check" "${1:-1}" || status=1
  done
done
exit $status
