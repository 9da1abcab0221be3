#!/usr/bin/env python3
"""Turns `switchyard bench` result lines (JSON, one per run) into the comparison table of
BENCHMARKS.md (medians over rounds, between the compare:begin/end markers) and an SVG chart.

Usage: report.py RESULTS.jsonl BENCHMARKS.md CHART.svg [COMMIT COMMAND]
"""
import datetime
import json
import statistics
import sys
from collections import defaultdict

LABELS = ["direct", "switchyard", "nginx", "haproxy", "caddy"]
PEERS = ["nginx", "haproxy", "caddy"]


def per_run(r):
    """The figures one result line gives, by row name."""
    n = max(r["count"], 1)
    cpu = r.get("proxy_cpu_s")
    a = r["args"]
    out = {}
    if a.startswith("handshakes"):
        out["handshakes/s, 50 workers"] = r["rate"]
        if cpu is not None:
            out["proxy CPU µs per handshake"] = cpu * 1e6 / n
    elif a.startswith("echo"):
        out["echo msgs/s, 100 tunnels, 64-byte frames"] = r["rate"]
        out["echo p99 µs"] = r["p99_us"]
    elif a.startswith("bulk --tunnels 1 "):
        out["bulk MB/s, 1 tunnel (64 KiB frames, echoed)"] = r["rate"] / 1e6
        if cpu is not None:
            out["proxy CPU s per GB (1 tunnel)"] = cpu / (n / 1e9)
    elif a.startswith("bulk --tunnels 8 "):
        out["bulk MB/s, 8 tunnels"] = r["rate"] / 1e6
    elif a == "idle":
        grown = max(r["rss_after_kib"] - r["rss_before_kib"], 0)
        out["RSS per idle tunnel, KiB"] = grown / n
    return out


ROWS = [
    ("handshakes/s, 50 workers", True, "{:,.0f}"),
    ("proxy CPU µs per handshake", False, "{:.0f}"),
    ("echo msgs/s, 100 tunnels, 64-byte frames", True, "{:,.0f}"),
    ("echo p99 µs", False, "{:,.0f}"),
    ("bulk MB/s, 1 tunnel (64 KiB frames, echoed)", True, "{:,.0f}"),
    ("bulk MB/s, 8 tunnels", True, "{:,.0f}"),
    ("proxy CPU s per GB (1 tunnel)", False, "{:.2f}"),
    ("RSS per idle tunnel, KiB", False, "{:.1f}"),
]


def medians(lines):
    values = defaultdict(list)
    for r in lines:
        for row, v in per_run(r).items():
            if v is not None:
                values[(row, r["label"])].append(v)
    return {k: statistics.median(v) for k, v in values.items()}


def table(med, rounds, stamp=""):
    head = "| figure | " + " | ".join(LABELS) + " | switchyard vs best peer |"
    lines = [head, "|" + "---|" * (len(LABELS) + 2)]
    for row, higher_better, fmt in ROWS:
        cells = []
        for label in LABELS:
            v = med.get((row, label))
            cells.append("–" if v is None else fmt.format(v))
        ours = med.get((row, "switchyard"))
        peers = [med[(row, p)] for p in PEERS if (row, p) in med]
        ratio = "–"
        if ours is not None and peers:
            best = max(peers) if higher_better else min(peers)
            if best:
                ratio = f"{ours / best:.2f}×"
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {ratio} |")
    note = (
        f"\n{stamp}Medians of {rounds} interleaved round(s); `direct` is the echo upstream without a "
        "proxy (its RSS row is the upstream's own cost per connection). Ratios: higher is "
        "better for rates, lower for CPU, latency and memory.\n"
    )
    return "\n".join(lines) + "\n" + note


def svg(med):
    """One group of bars per figure, each bar relative to the group's largest value."""
    colours = {"direct": "#999999", "switchyard": "#d62728", "nginx": "#2ca02c",
               "haproxy": "#1f77b4", "caddy": "#9467bd"}
    w, row_h, bar_h, left = 900, 24 + 12 * len(LABELS), 11, 330
    h = 40 + row_h * len(ROWS)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    for i, label in enumerate(LABELS):
        out.append(f'<rect x="{left + i * 110}" y="8" width="10" height="10" fill="{colours[label]}"/>'
                   f'<text x="{left + 14 + i * 110}" y="17">{label}</text>')
    for r, (row, _, fmt) in enumerate(ROWS):
        y0 = 40 + r * row_h
        vals = {l: med.get((row, l)) for l in LABELS}
        top = max([v for v in vals.values() if v] or [1])
        out.append(f'<text x="4" y="{y0 + 14}">{row}</text>')
        for i, label in enumerate(LABELS):
            v = vals[label]
            if v is None:
                continue
            y = y0 + 4 + i * 12
            bw = (w - left - 90) * v / top
            out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" '
                       f'fill="{colours[label]}"/>')
            out.append(f'<text x="{left + bw + 4:.1f}" y="{y + 10}">{fmt.format(v)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    results, benchmarks, chart = sys.argv[1:4]
    with open(results) as f:
        lines = [json.loads(l) for l in f if l.strip()]
    rounds = max((r.get("round", 1) for r in lines), default=0)
    med = medians(lines)
    stamp = ""
    if len(sys.argv) > 5:
        commit, command = sys.argv[4:6]
        stamp = f"Run {datetime.date.today()}, commit {commit}: `{command}`. "
    with open(chart, "w") as f:
        f.write(svg(med))
    begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
    block = f"{begin}\n{table(med, rounds, stamp)}\n![comparison chart](bench/compare.svg)\n{end}"
    with open(benchmarks) as f:
        text = f.read()
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Side by side: direct, switchyard, nginx, HAProxy, Caddy\n\n" \
            + "`bash bench/compare.sh` (installs the peers from Debian, runs everything on " \
            + "loopback).\n\n" + block + "\n"
    with open(benchmarks, "w") as f:
        f.write(text)
    print(table(med, rounds, stamp))


if __name__ == "__main__":
    main()
