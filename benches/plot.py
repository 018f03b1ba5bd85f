#!/usr/bin/env python3
"""Plots for the scale benchmark (benches/scale/).

usage: plot.py RESULTS_JSON OUT_DIR

Writes propagation.png (time to the last copy against N, with the bound
D + N/R and its 10% allowance), rss.png (controller RSS against the number of
copies it manages) and burst.png (copy writes per second during the burst,
with R and R + burst). Needs matplotlib only.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def propagation(r, out):
    rows = r.get("propagation") or []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = [p["n"] for p in rows]
    bound = [p["bound_s"] for p in rows]
    ax.plot(ns, bound, "k--", label="bound D + N/R")
    ax.fill_between(ns, bound, [b * 1.1 for b in bound], color="0.85", label="target: within 10%")
    for p in rows:
        ax.scatter([p["n"]] * len(p["runs_s"]), p["runs_s"], color="tab:blue", alpha=0.4, s=18)
    ax.plot(ns, [p["median_s"] for p in rows], "o-", color="tab:blue", label="median of runs")
    ax.set_xlabel("target namespaces N")
    ax.set_ylabel("update to last copy updated (s)")
    ax.set_title("Propagation of one source update (D = 1 s, R = 100/s)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "propagation.png", dpi=110)
    plt.close(fig)


def rss(r, out):
    ramp = r.get("rss_ramp") or []
    points = r.get("rss_points") or []
    if not ramp and not points:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if ramp:
        ax.plot(
            [s["copies"] for s in ramp],
            [s["rss_mib"] for s in ramp],
            "-",
            color="tab:blue",
            label="while the controller creates the copies",
        )
    markers = "osD^vP*X"
    for i, p in enumerate(points):
        ax.scatter([p["copies"]], [p["rss_mib"]], marker=markers[i % len(markers)], s=40, zorder=3, label=p["label"])
    ax.axhline(64, color="tab:red", linestyle="--", label="target 64 MiB")
    ax.set_xlabel("copies managed")
    ax.set_ylabel("controller RSS (MiB)")
    ax.set_title("Controller memory against the number of copies")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=110)
    plt.close(fig)


def burst(r, out):
    b = r.get("burst") or {}
    times = b.get("watch_times_s") or []
    if not times:
        return
    rate, extra = b.get("rate", 0), b.get("burst", 0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    per_s = Counter(int(t) for t in times)
    xs = sorted(per_s)
    ax.step(xs, [per_s[x] for x in xs], where="post", label="copy writes per second (watch)")
    server = b.get("server_per_second") or []
    if server:
        s0 = server[0][0]
        ax.plot([s - s0 for s, _ in server], [n for _, n in server], ".", color="tab:green", label="per server second (managedFields)")
    ax.axhline(rate, color="k", linestyle="--", label=f"R = {rate}/s")
    ax.axhline(rate + extra, color="tab:red", linestyle=":", label=f"R + burst = {rate + extra}")
    ax.set_xlabel("seconds since the first copy write")
    ax.set_ylabel("writes")
    ax.set_title("Burst: every source changed within 2 s")
    ax.set_ylim(bottom=0, top=(rate + extra) * 1.3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    fig.tight_layout()
    fig.savefig(out / "burst.png", dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    r = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    propagation(r, out)
    rss(r, out)
    burst(r, out)
    print(f"plot.py: PNGs in {out}")


if __name__ == "__main__":
    main()
