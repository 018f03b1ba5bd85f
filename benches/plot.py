#!/usr/bin/env python3
"""Plots for the scale benchmark (benches/scale/).

usage: plot.py RESULTS_JSON OUT_DIR

Writes propagation.png (time to the last copy against N, with the bound
D + N/R and its 10% allowance), rss.png (controller RSS against the number of
copies it manages: Secrets, and Secrets and ConfigMaps together), scale.png
(the scale scenario: the controller's RSS and time to ready, and what the
control plane holds, against the number of copies) and burst.png (copy writes
per second during the burst, with R and R + burst). Needs matplotlib only.
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
    kinds = r.get("kinds_points") or []
    if not ramp and not points and not kinds:
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
    for i, p in enumerate(kinds):
        label = p["label"] if p["label"].startswith("both kinds") else "both kinds: " + p["label"]
        ax.scatter([p["copies"]], [p["rss_mib"]], marker=markers[i % len(markers)], s=40, zorder=3,
                   facecolors="none", edgecolors="tab:purple", label=label)
    ax.axhline(64, color="tab:red", linestyle="--", label="target 64 MiB (Secrets)")
    if kinds:
        ax.axhline(96, color="tab:purple", linestyle=":", label="target 96 MiB (both kinds)")
    ax.set_xlabel("copies managed")
    ax.set_ylabel("controller RSS (MiB)")
    ax.set_title("Controller memory against the number of copies")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=110)
    plt.close(fig)


def scale(r, out):
    sizes = r.get("scale") or []
    if not sizes:
        return
    copies = [s["copies"] for s in sizes]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot(copies, [s["rss_start_mib"] for s in sizes], "o-", label="after the start")
    ax.plot(copies, [s["rss_resync_mib"] for s in sizes], "s-", label="after a resync")
    ax.plot(copies, [s["hwm_mib"] for s in sizes], "^:", label="peak (VmHWM)")
    ax.axhline(110, color="tab:red", linestyle="--", label="target 110 MiB")
    ax.set_xlabel("copies (seeded in sync)")
    ax.set_ylabel("controller RSS (MiB)")
    ax.set_title("Controller over copies in sync")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ready = ax.twinx()
    ready.plot(copies, [s["ready_s"] for s in sizes], "x--", color="tab:gray")
    ready.set_ylabel("time to ready (s, gray; target 10 s)")
    ready.set_ylim(bottom=0, top=max(12, max(s["ready_s"] for s in sizes) * 1.2))
    plane = [s["plane"] for s in sizes]
    bx.plot(copies, [p["apiserver_rss_mib"] for p in plane], "o-", label="kube-apiserver RSS")
    bx.plot(copies, [p["apiserver_hwm_mib"] for p in plane], "o:", label="kube-apiserver peak RSS")
    bx.plot(copies, [p["etcd_rss_mib"] for p in plane], "s-", label="etcd RSS")
    bx.plot(copies, [p["etcd_db_mib"] for p in plane], "D-", label="etcd database")
    bx.plot(copies, [p["etcd_db_in_use_mib"] for p in plane], "D:", label="etcd database in use")
    bx.set_xlabel("copies (seeded in sync)")
    bx.set_ylabel("MiB")
    quota = plane[-1].get("etcd_quota_mib")
    known = isinstance(quota, (int, float)) and quota == quota
    bx.set_title(f"Control plane (etcd quota {quota:.0f} MiB)" if known else "Control plane")
    bx.set_xlim(left=0)
    bx.set_ylim(bottom=0)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=110)
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
    scale(r, out)
    burst(r, out)
    print(f"plot.py: PNGs in {out}")


if __name__ == "__main__":
    main()
