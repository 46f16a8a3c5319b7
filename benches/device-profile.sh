#!/usr/bin/env bash
# Where the time of the latency-bound kernels goes: ncu sections (scheduler, warp states, source
# counters, memory, occupancy) over one report's top-k, Quest selection and decode kernels
# (PROFILE_KERNELS, a regex, and PROFILE_CONTEXT override them), and the per-instruction stall
# samples of the source page.
#   here:   bash benches/device-prepare.sh
#   there:  source .devbin/on-device.sh; bash benches/device-profile.sh
# Results in device-out/, packed into $OUT/profile.tar.gz.
source "$(dirname "$0")/device-lib.sh" profile.tar.gz
B=.devbin/kvsparse
# Fill the module store first so that ncu's run does not compile.
kernels=${PROFILE_KERNELS:-"topk_sel_|quest_select_kv|quest_decode_cluster|attention_decode_mma|attention_merge_rows"}
ctx=${PROFILE_CONTEXT:-131072}
timeout 100 $B report --preset paper --contexts $ctx --repeats 1 --backend cuda --out "$out/warm" >/dev/null 2>&1
sections="--section LaunchStats --section Occupancy --section SchedulerStats --section WarpStateStats --section SourceCounters --section MemoryWorkloadAnalysis --section SpeedOfLight"
timeout 300 ncu --clock-control none --cache-control none $sections \
  --kernel-name regex:"$kernels" --launch-count 40 \
  -o "$out/prof" $B report --preset paper --contexts $ctx --repeats 1 --backend cuda --out "$out/ncu" >"$out/ncu.log" 2>&1
echo "ncu rc $?"
ncu --import "$out/prof.ncu-rep" --page details >"$out/details.txt" 2>&1
ncu --import "$out/prof.ncu-rep" --page raw --csv --metrics gpu__time_duration.sum,launch__grid_size,launch__registers_per_thread,smsp__inst_executed.sum,smsp__average_warp_latency_issue_stalled_barrier,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio >"$out/raw.csv" 2>&1
ncu --import "$out/prof.ncu-rep" --page source --csv --print-source sass >"$out/source.csv" 2>&1
wc -l "$out/details.txt" "$out/raw.csv" "$out/source.csv"
grep -E "^  [a-z_]+.*\(|Duration|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Issued Warp Per|Memory Throughput|DRAM Throughput" "$out/details.txt" | head -150
