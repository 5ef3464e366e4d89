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
        answers = ", ".join(f"{n} x '{printable(a)}'" for a, n in sorted(r["answers"].items(), key=lambda x: -x[1])[:2])
        return f"{r['most_open']} open at most, {r['closed_by_daemon']} closed by it ({answers})"
    return raw[:60]


def printable(text):
    """An answer without the telnet negotiation in front of it (ser2net's)."""
    return "".join(c for c in text if c.isprintable() and c != "\ufffd")[:60]


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
    print("| flood | daemon | peak RSS MiB | RSS growth MiB | peak fds | fds growth | live p99 ms | lines lost, most (written) | alive after | the flood (median run) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
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
            before = [mib(r.get("rss_before_kib")) for r in rs]
            grow = [None if a is None or b is None else a - b for a, b in zip(rss, before)]
            fds = [r.get("peak_fds") for r in rs]
            fgrow = [None if r.get("peak_fds") is None or r.get("fds_before") is None
                     else r["peak_fds"] - r["fds_before"] for r in rs]
            has_live = any(r.get("live") for r in rs)
            lat = [p99(r) for r in rs] if has_live else []
            lost = [(r.get("live") or {}).get("lost") for r in rs]
            written = [(r.get("live") or {}).get("written") for r in rs]
            alive = sum(1 for r in rs if r.get("alive") and "error" not in r)
            mid = sorted(rs, key=lambda r: r.get("peak_rss_kib") or 0)[len(rs) // 2]
            errors = [r["error"] for r in rs if "error" in r]
            figs[d] = {"rss": rss, "before": before, "grow": grow, "fds": fds, "fgrow": fgrow, "lat": lat}
            lost_s = "-"
            if has_live and any(x is not None for x in lost):
                i = max(range(len(rs)), key=lambda i: lost[i] or 0)
                lost_s = f"{lost[i]} ({written[i]})"
            print(f"| {f} | {d} | {spread(rss)} | {spread(grow)} | {spread(fds, 0)} | {spread(fgrow, 0)} | "
                  f"{spread(lat) if has_live else 'no console'} | {lost_s} | "
                  f"{alive} of {len(rs)} | {flood_said(mid)}{'; ' + errors[0] if errors else ''} |")
        if "rtmd" in figs and len(daemons) == 2:
            peer = [d for d in daemons if d != "rtmd"][0]
            a, b = figs["rtmd"], figs[peer]

            def ratio(x, y):
                x, y = med(x), med(y)
                return "-" if x is None or y is None or y == 0 else f"{x / y:.2f}"

            print(f"| {f} | rtmd / {peer} (medians) | {ratio(a['rss'], b['rss'])} | | "
                  f"{ratio(a['fds'], b['fds'])} | | {ratio(a['lat'], b['lat']) if b['lat'] else '-'} | | | |")
            misses = []
            if any(v is None or v >= GOAL_RSS_MIB for v in a["rss"]):
                misses.append(f"RSS reached {fmt(max(v for v in a['rss'] if v is not None))} MiB")
            if a["lat"] and any(v is None or v >= GOAL_P99_MS for v in a["lat"]):
                misses.append("live p99 " + ("lost lines" if None in a["lat"] else f"reached {fmt(max(a['lat']))} ms"))
            if med(a["rss"]) is not None and med(b["rss"]) is not None and med(a["rss"]) > med(b["rss"]):
                misses.append(f"peak RSS {fmt(med(a['rss']))} MiB above {peer}'s {fmt(med(b['rss']))} "
                              f"(at rest {fmt(med(a['before']))} vs {fmt(med(b['before']))}; "
                              f"the flood added {fmt(med(a['grow']))} vs {fmt(med(b['grow']))})")
            if med(a["fds"]) is not None and med(b["fds"]) is not None and med(a["fds"]) > med(b["fds"]):
                misses.append(f"peak descriptors {fmt(med(a['fds']), 0)} above {peer}'s {fmt(med(b['fds']), 0)} "
                              f"(the flood added {fmt(med(a['fgrow']), 0)} vs {fmt(med(b['fgrow']), 0)})")
            if a["lat"] and b["lat"]:
                ma, mb = med(a["lat"]), med(b["lat"])
                if ma is not None and (mb is not None and ma > mb):
                    misses.append(f"live p99 {fmt(ma)} ms above {peer}'s {fmt(mb)}")
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
