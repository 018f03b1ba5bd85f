#!/usr/bin/env python3
"""Draws the Grafana dashboard (helm/push-to-k8s/dashboards/push-to-k8s.json) from
data a real Prometheus recorded while the controller worked, panel for panel on the
dashboard's own 24-column grid, for docs/operations.md.

usage: plot_dashboard.py RECORDING_JSON OUT_PNG

RECORDING_JSON is what tests/e2e_prometheus.rs writes with DASHBOARD_RECORD=FILE
(every panel's queries as range queries over the run). Needs matplotlib only.
"""

import json
import math
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

BG, PANEL, FG, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c", "#37872d", "#8ab8ff", "#ffcb7d"]


def legend(fmt, metric):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt or "") or str(metric)


def fmt_value(v, unit):
    if v is None or math.isnan(v):
        return "–"
    if unit == "bytes":
        for u in ["B", "KiB", "MiB", "GiB"]:
            if abs(v) < 1024 or u == "GiB":
                return f"{v:.1f} {u}" if u != "B" else f"{v:.0f} B"
            v /= 1024
    if unit == "s":
        return f"{v * 1000:.0f} ms" if abs(v) < 1 else f"{v:.2f} s"
    if unit == "reqps":
        return f"{v:.2f}/s"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}"


def main(recording, out):
    panels = json.load(open(recording))["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, row_h = 18.0, 0.42
    fig = plt.figure(figsize=(width, rows * row_h + 0.6), facecolor=BG)
    fig.text(0.01, 1 - 0.25 / (rows * row_h + 0.6), "push-to-k8s", color=FG, fontsize=14, va="center", weight="bold")
    top = 1 - 0.6 / (rows * row_h + 0.6)
    t0 = None
    for p in panels:
        for t in p["targets"]:
            for s in t["result"]:
                if s["values"]:
                    first = s["values"][0][0]
                    t0 = first if t0 is None else min(t0, first)
    for p in panels:
        g = p["gridPos"]
        pad = 0.004
        x0, w = g["x"] / 24 + pad, g["w"] / 24 - 2 * pad
        h = g["h"] / rows * top - 2 * pad
        y0 = top - (g["y"] + g["h"]) / rows * top + pad
        box = fig.add_axes([x0, y0, w, h])
        box.set_facecolor(PANEL)
        box.set_xticks([]), box.set_yticks([])
        for s in box.spines.values():
            s.set_color(GRID)
        box.text(0.01, 0.97, p["title"], color=FG, fontsize=9, va="top", ha="left", transform=box.transAxes, weight="bold")
        unit = p.get("unit")
        if p["type"] == "stat":
            texts = []
            for t in p["targets"]:
                for s in t["result"]:
                    vals = [float(v[1]) for v in s["values"] if v[1] != "NaN"]
                    texts.append((legend(t["legend"], s["metric"]), vals[-1] if vals else None))
            for i, (name, v) in enumerate(texts or [("", None)]):
                n = max(len(texts), 1)
                box.text((i + 0.5) / n, 0.42, fmt_value(v, unit), color=COLORS[0], fontsize=20, ha="center", va="center", transform=box.transAxes, weight="bold")
                if n > 1:
                    box.text((i + 0.5) / n, 0.12, name, color=FG, fontsize=7, ha="center", transform=box.transAxes)
            continue
        ax = fig.add_axes([x0 + 0.035 * (24 / g["w"]) * w / 1.0 * 0 + 0.03, y0 + 0.045 * (rows / g["h"]) * h, w - 0.04, h * 0.62])
        ax.set_facecolor(PANEL)
        ax.tick_params(colors=FG, labelsize=7)
        for s in ax.spines.values():
            s.set_color(GRID)
        ax.grid(color=GRID, linewidth=0.5)
        i = 0
        for t in p["targets"]:
            for s in t["result"]:
                xs = [(float(v[0]) - t0) for v in s["values"]]
                ys = [float(v[1]) if v[1] != "NaN" else float("nan") for v in s["values"]]
                style = "--" if "bound" in (t["legend"] or "") else "-"
                ax.plot(xs, ys, style, color=COLORS[i % len(COLORS)], linewidth=1.2, label=legend(t["legend"], s["metric"]))
                i += 1
        # unit bound now: a plain closure would see the last panel's unit at draw time.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, unit=unit: fmt_value(v, unit)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}s"))
        if i:
            ncol = 4 if g["w"] >= 12 else 3
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=ncol, frameon=False, labelcolor=FG)
    fig.savefig(out, dpi=110, facecolor=BG)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
