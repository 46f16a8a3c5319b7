"""Puts kvsparse's report rows beside the peers timed in the same run.

usage: python3 merge.py peers.json report-long-cuda.json [report-long-wgpu.json ...] > merged.md
For each report row that has a peer at the same shape, prints our time, theirs, and theirs / ours
(> 1 means kvsparse is faster).
"""

import json
import sys


def peer_for(row, peers, graph):
    """The peer row timed at the same shape (timed as a graph replay when ours was), or None."""
    if graph:
        plain = peers
        peers = {(name[: -len("_graph")], shape): p for (name, shape), p in plain.items() if name.endswith("_graph")}
    t, phase, method = row["context"], row["phase"], row["method"]
    if phase == "decode" and row["backbone"] == "attention":
        return peers.get(("sdpa_decode", f"T{t}"))
    if phase == "prefill" and row["backbone"] == "attention":
        return peers.get(("sdpa_prefill", f"T{t}"))
    if phase == "kernel" and method == "topk":
        r, rest = row["budget"].split("x", 1)
        n, k = rest.split("/k")
        return peers.get(("topk", f"{r}x{n} k{k}"))
    if phase == "kernel" and method == "decay_scan" and row["context"] == 32768 and row["budget"] == "C4096":
        return peers.get(("chunk_hgrn", "B1 T32768 C4096 f32"))
    return None


def main():
    peers_doc = json.load(open(sys.argv[1]))
    peers = {(p["peer"], p["shape"]): p for p in peers_doc["rows"]}
    print(f"peers on {peers_doc['device']} (torch {peers_doc['torch']})\n")
    for path in sys.argv[2:]:
        rep = json.load(open(path))
        print(f"### {rep['backend']} on {rep['device']} (preset {rep['preset']}, timer {rep['timer']})\n")
        print("| phase | method | backbone | context | budget | ours | peer | peer time | peer / ours |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rep["rows"]:
            p = peer_for(r, peers, "graph" in rep["timer"])
            if p is None:
                continue
            ours, theirs = r["median_s"], p["median_s"]
            print(
                f"| {r['phase']} | {r['method']} | {r['backbone']} | {r['context']} | {r['budget']} | "
                f"{ours * 1e6:.1f} µs | {p['peer']} {p['shape']} | {theirs * 1e6:.1f} µs | {theirs / ours:.2f}x |"
            )
        print()


if __name__ == "__main__":
    main()
