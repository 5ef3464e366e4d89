#!/usr/bin/env python3
"""The tables of bench/soak.sh, from the runs' JSON lines (bench/soak/run.py's output).

usage: table.py ROWS.jsonl      the summary: per flood and daemon min / median / max over
                                the runs, the ratios of the medians, the goal;
       table.py --one ROW_JSON  one run, one line.
"""
import json
import statistics
import sys

GOAL_RSS_MIB = 64
GOAL_P99_MS = 50


def mib(kib):
    return None if kib is None else kib / 1024


def p99(row):
    live = row.get("live")
    return None if not live else live.get("p99_ms")


def flood_said(row):
    """What the flood got through, in a few words."""
    raw = row.get("flood_result", "")
    try:
        r = json.loads(raw)
    except ValueError:
        return raw[:60]  # tests/nbd/flood.py: "sent R requests (B bytes)"
    if "bytes" in r:
        return f"{r['bytes'] / 1e6:.1f} MB taken" + (f", closed: {r['closed']}" if "closed" in r else "")
    if "breaks" in r:
        return f"{r['breaks']} breaks sent" + (f", closed: {r['closed']}" if "closed" in r else "")
    if "most_open" in r:
        answers = ", ".join(f"{n} x {a!r}" for a, n in sorted(r["answers"].items(), key=lambda x: -x[1])[:2])
        return f"{r['most_open']} open at most, {r['closed_by_daemon']} closed by it ({answers})"
    return raw[:60]


def one(row):
    live = row.get("live") or {}
    lat = "no console" if not row.get("live") and "error" not in row else (
        f"p50 {fmt(live.get('p50_ms'))} p99 {fmt(live.get('p99_ms'))} max {fmt(live.get('max_ms'))} ms, "
        f"{live.get('lost', '?')}/{live.get('written', '?')} lost")
    parts = [f"{row['flood']:<6} {row['daemon']:<9} run {row.get('run', '?')}",
             f"load {row.get('load1', 0):.2f}",
             f"RSS {fmt(mib(row.get('rss_before_kib')))} -> peak {fmt(mib(row.get('peak_rss_kib')))} MiB",
             f"fds {row.get('fds_before')} -> {row.get('peak_fds')}",
             lat,
             flood_said(row),
             f"switched {row.get('switched', 0)}",
             "alive" if row.get("alive") else "DEAD"]
    if "error" in row:
        parts.append("ERROR " + row["error"])
    return "  ".join(parts)


def fmt(v, digits=1):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def spread(values, digits=1):
    """min / median / max; a run without a figure (a lost p99, a dead daemon) shows as such."""
    if not values:
        return "-"
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        tail = f" ({len(values) - len(known)} of {len(values)}: none)"
    else:
        tail = ""
    if not known:
        return "none" + tail
    return f"{fmt(min(known), digits)} / {fmt(statistics.median(known), digits)} / {fmt(max(known), digits)}" + tail


def med(values):
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summary(rows):
    floods = []
    for r in rows:
        if r["flood"] not in floods:
            floods.append(r["flood"])
    print()
    print("| flood | daemon | peak RSS MiB | peak fds | live p99 ms | lines lost (of ~written) | alive after | the flood (median run) |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for f in floods:
        by = {}
        for r in rows:
            if r["flood"] == f:
                by.setdefault(r["daemon"], []).append(r)
        daemons = list(by)
        figs = {}
        for d in daemons:
            rs = by[d]
            rss = [mib(r.get("peak_rss_kib")) for r in rs]
            fds = [r.get("peak_fds") for r in rs]
            has_live = any(r.get("live") for r in rs)
            lat = [p99(r) for r in rs] if has_live else []
            lost = [(r.get("live") or {}).get("lost") for r in rs]
            written = [(r.get("live") or {}).get("written") for r in rs]
            alive = sum(1 for r in rs if r.get("alive") and "error" not in r)
            mid = sorted(rs, key=lambda r: r.get("peak_rss_kib") or 0)[len(rs) // 2]
            errors = [r["error"] for r in rs if "error" in r]
            figs[d] = (rss, fds, lat)
            print(f"| {f} | {d} | {spread(rss)} | {spread(fds, 0)} | "
                  f"{spread(lat) if has_live else 'no console'} | "
                  f"{(max(x for x in lost if x is not None) if any(x is not None for x in lost) else '-') if has_live else '-'}"
                  f"{(' (' + str(max(x for x in written if x is not None)) + ')') if has_live and any(written) else ''} | "
                  f"{alive} of {len(rs)} | {flood_said(mid)}{'; ' + errors[0] if errors else ''} |")
        if "rtmd" in figs and len(daemons) == 2:
            peer = [d for d in daemons if d != "rtmd"][0]
            (r_rss, r_fds, r_lat), (p_rss, p_fds, p_lat) = figs["rtmd"], figs[peer]

            def ratio(a, b):
                a, b = med(a), med(b)
                return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"

            print(f"| {f} | rtmd / {peer} (medians) | {ratio(r_rss, p_rss)} | {ratio(r_fds, p_fds)} | "
                  f"{ratio(r_lat, p_lat) if p_lat else '-'} | | | |")
            misses = []
            if any(v is None or v >= GOAL_RSS_MIB for v in r_rss):
                misses.append(f"RSS reached {fmt(max(v for v in r_rss if v is not None))} MiB")
            if r_lat and any(v is None or v >= GOAL_P99_MS for v in r_lat):
                misses.append("live p99 " + ("lost lines" if None in r_lat else f"reached {fmt(max(r_lat))} ms"))
            for name, a, b in (("RSS", r_rss, p_rss), ("descriptors", r_fds, p_fds), ("live p99", r_lat, p_lat)):
                if a and b and med(a) is not None and med(b) is not None and med(a) > med(b):
                    misses.append(f"{name} above {peer}'s")
            verdicts.append(f"{f}: " + ("goal met" if not misses else "goal NOT met: " + "; ".join(misses)))
    print()
    print(f"goal: rtmd under {GOAL_RSS_MIB} MiB RSS and live p99 under {GOAL_P99_MS} ms on every run, "
          "medians no worse than the peer's")
    for v in verdicts:
        print("  " + v)


def main():
    if sys.argv[1] == "--one":
        print(one(json.loads(sys.argv[2])), flush=True)
        return
    with open(sys.argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    summary(rows)


if __name__ == "__main__":
    main()
