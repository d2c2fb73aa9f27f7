"""Every benchmark the issues name, side by side in one run, as ratios against their goals.

    make bench            (= python -m bench; ~8 min on 2 quiet cores)
    python -m bench --sizes 2000 10000 --rounds 100     (a quick look)

Figures go to bench/results/summary.json and a Markdown table to bench/results/summary.md.
Timings are wall-clock on a shared machine: read ratios, not absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench import cutover_load, derived_repair, kill_sweep, real_model, rollback, writer_guard
from lockstep import config, opensearch_node, runtime, services
from lockstep.ops import check


def check_times(stacks: list[dict], root, repeats: int) -> list[dict]:
    """The consistency check on the rollback benchmark's live stacks (real data, v1 live)."""
    catalog = config.load_catalog()
    out = []
    for item in stacks:
        settings = config.load_stack(item["stack"], root)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            record = check.run(settings, catalog)
            runs.append(time.perf_counter() - started)
            assert record.passed, [c.name for c in record.failures]
        out.append(
            {"docs": item["docs"], "median_s": round(statistics.median(runs), 3), "runs": [round(r, 3) for r in runs]}
        )
        print(f"  check at {item['docs']:>7} docs: median {statistics.median(runs):.2f}s of {repeats}", flush=True)
    return out


def rows(figures: dict) -> list[tuple[str, str, str, bool]]:
    """(what, measured, goal, met) for the summary table."""
    by_size = figures["rollback"]
    out = [
        (
            f"rollback to a retained version vs full re-embed, {r['docs']:,} docs",
            f"{r['speedup']:,.0f}× ({r['full_reembed_s']:.1f}s vs {r['rollback_s']:.3f}s)",
            "≥ 100×",
            r["speedup"] >= 100,
        )
        for r in by_size
    ]
    if "rollback_growth" in figures:
        out.append(
            (
                "rollback time growth t(max)/t(min)",
                f"{figures['rollback_growth']:.2f}",
                "≤ 1.3",
                figures["rollback_growth"] <= 1.3,
            )
        )
    checks = figures["check"]
    for c in checks:
        out.append(
            (
                f"check time, {c['docs']:,} docs",
                f"{c['median_s']:.2f}s",
                "≤ 2 s at 100k",
                c["median_s"] <= 2.0 or c["docs"] < 100_000,
            )
        )
    if len(checks) > 1:
        growth = checks[-1]["median_s"] / checks[0]["median_s"]
        size = checks[-1]["docs"] / checks[0]["docs"]
        out.append((f"check time growth for {size:.0f}× docs", f"{growth:.2f}×", "sublinear", growth < size))
    out.append(
        (
            "backfill vs raw encode alone (the goal is against 1/(1/e + 1/b), below)",
            f"{figures['backfill_vs_encode']:.2f}",
            "report",
            True,
        )
    )
    out += [
        (
            f"catch-up of a 1 % delta (median of {rollback.CATCH_UPS}) vs the same stack's full re-embed, {c['docs']:,} docs",
            f"{c['ratio']:.1%} ({c['catch_up_s']:.2f}s vs {c['full_reembed_s']:.2f}s)",
            "≤ 3 %",
            c["ratio"] <= 0.03,
        )
        for c in figures["catch_up"]
    ]
    out.append(("`lockstep plan` wall time", f"{figures['plan_s']:.2f}s", "≤ 3 s", figures["plan_s"] <= 3.0))
    load = figures["cutover_load"]
    out.append(
        (
            f"{load['rounds']} cutovers under k-NN load: queries that saw 0 or 2 indices",
            f"{load['mixed'] + load['errors']} of {load['queries']}",
            "0",
            load["mixed"] + load["errors"] == 0,
        )
    )
    out.append(
        (
            "pointer/alias disagreement (samples in the swap→pointer-write window)",
            f"{load['disagreeing']} of {load['samples']} in {load['windows']} windows",
            "report",
            True,
        )
    )
    if load.get("clients"):
        clients = load["clients"]
        reader, alias = clients["reader"], clients["alias"]
        out.append(
            (
                f"readers during the same {load['rounds']} cutovers: answers encoded by one version, answered by "
                f"another — lockstep.reader (control: the alias-reading client)",
                f"{reader['mixed'] + reader['errors']} of {reader['answers']} (control: {alias['mixed']} of {alias['answers']})",
                "0 (control > 0)",
                reader["mixed"] + reader["errors"] == 0 and alias["mixed"] > 0,
            )
        )
        out.append(
            (
                "lockstep.reader latency vs the alias-reading client (same pointer read and encode), p50",
                f"{clients['latency_ratio_p50']:.2f}× ({reader['p50_ms']:.1f} vs {alias['p50_ms']:.1f} ms; "
                f"load {load['load_average']:.1f})",
                "≤ 1.10×",
                clients["latency_ratio_p50"] <= 1.10,
            )
        )
    if "derived_repair" in figures:
        repair = figures["derived_repair"]
        rates = repair["per_s"]
        out.append(
            (
                f"derived repair (recompute) vs the slower of bare msearch k-NN / bare BatchWriteItem, {repair['docs']:,} ids",
                f"{repair['ratio']:.2f} ({rates['repair']:,.0f}/s; msearch {rates['msearch']:,.0f}/s, "
                f"writes {rates['write']:,.0f}/s; load {repair['load_average']})",
                "≥ 0.9",
                repair["ratio"] >= 0.9,
            )
        )
        out.append(
            (
                "derived repair: the best this machine allows (the parts' CPU seconds over its cores) vs the same ceiling",
                f"{repair['cpu_floor_ratio']:.2f} (CPU s: msearch {repair['cpu_s']['msearch']}, writes "
                f"{repair['cpu_s']['write']}, work-list scan {repair['cpu_s']['scan']}, repair {repair['cpu_s']['repair']})",
                "report",
                True,
            )
        )
    if "kill_sweep" in figures:
        sweep = figures["kill_sweep"]
        out.append(
            (
                f"backfill SIGKILLed at {sweep['points']} random points, then re-run ({sweep['docs']:,} docs)",
                f"{sweep['landed']} kills landed; lost {len(sweep['lost'])}, extra {len(sweep['extra'])}, "
                f"wrong hash {len(sweep['wrong_hash'])}, alias moved {len(sweep['live_moved'])}",
                "0 lost, 0 extra",
                bool(sweep["ok"]),
            )
        )
    if "ray" in figures:
        ray = figures["ray"]["ratios"]
        out.append(
            (
                f"Ray engine vs local, {figures['ray']['docs']:,} docs: 1 worker / 2 workers",
                f"{ray['ray_1_vs_local']:.2f} / {ray['ray_2_vs_local']:.2f}",
                "report (2 shared cores)",
                True,
            )
        )
        out.append(
            (
                "local backfill vs 1/(1/e + 1/b): raw encode e, bulk of pre-computed vectors b (hashgram)",
                f"{ray['local_vs_encode_then_bulk']:.2f}",
                "≥ 0.9",
                ray["local_vs_encode_then_bulk"] >= 0.9,
            )
        )
        out.append(
            (
                "local backfill vs the OpenSearch bulk ceiling (vectors pre-computed)",
                f"{ray['local_vs_bulk_ceiling']:.2f}",
                "report",
                True,
            )
        )
    if "writer_guard" in figures:
        guard = figures["writer_guard"]
        for mode in writer_guard.MODES:
            out.append(
                (
                    f"guarded derived-record writes ({mode}) vs unguarded BatchWriteItem, {guard['records']:,} records",
                    f"{guard['ratio'][mode]:.2f} ({guard['per_s'][mode]:,.0f}/s vs {guard['per_s']['unguarded']:,.0f}/s)",
                    "≥ 0.95",
                    guard["ratio"][mode] >= 0.95,
                )
            )
    if "real_model" in figures:
        out += real_model.rows(figures["real_model"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=200, help="cutovers under load (bench/README: why not 1,000)")
    parser.add_argument("--clients", type=int, default=2, help="lockstep.reader threads, and as many alias clients")
    parser.add_argument("--check-repeats", type=int, default=3)
    parser.add_argument("--kill-points", type=int, default=20, help="0 skips the kill sweep")
    parser.add_argument("--ray-docs", type=int, default=5000, help="0 skips local-vs-Ray")
    parser.add_argument("--guard-records", type=int, default=500, help="0 skips the writer guard")
    parser.add_argument(
        "--repair-docs",
        type=int,
        default=2000,
        help="derived repair vs its ceiling (the drill repairs ~2,000); 0 skips it",
    )
    parser.add_argument("--real-docs", type=int, default=1000, help="real-model rows (v4); 0 skips them")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    services.up()
    os.environ.update(services.environment())
    print("rollback vs rebuild, throughput, catch-up, plan:", flush=True)
    figures = rollback.run(args.sizes)
    print("consistency check time:", flush=True)
    root = runtime.home() / "bench-stacks"
    figures["check"] = check_times(figures["rollback"], root, args.check_repeats)
    print("catch-up of a 1 % delta (its apply's catch-up step vs the same stack's full re-embed):", flush=True)
    figures["catch_up"] = [rollback.catch_up_at(item, root, config.load_catalog()) for item in figures["rollback"]]
    rollback.stop_slots(figures)
    print(f"{args.rounds} cutovers under load:", flush=True)
    load = cutover_load.run(args.rounds, 200, 2, args.clients)
    figures["cutover_load"] = {
        "clients": cutover_load.client_summary(load["clients"]),
        "load_average": os.getloadavg()[0],
        "rounds": load["rounds"],
        "seconds": round(load["elapsed"], 1),
        "queries": load["queries"],
        "errors": len(load["errors"]),
        "mixed": load["mixed"],
        "samples": load["samples"],
        "disagreeing": load["disagreeing"],
        "windows": load["windows"],
    }
    if args.kill_points:
        print(f"kill sweep ({args.kill_points} points):", flush=True)
        kill_sweep.main(["--points", str(args.kill_points), "--docs", "2000"])
        figures["kill_sweep"] = json.loads(kill_sweep.RESULTS.read_text())
    if args.ray_docs:
        print(f"local vs Ray ({args.ray_docs:,} docs):", flush=True)
        subprocess.run([sys.executable, "-m", "bench.ray_scaling", "--docs", str(args.ray_docs)], check=True)
        figures["ray"] = json.loads((rollback.RESULTS / "ray_scaling.json").read_text())
    if args.guard_records:
        print(f"guarded vs unguarded derived-record writes ({args.guard_records:,} records):", flush=True)
        figures["writer_guard"] = writer_guard.run(args.guard_records)
    if args.repair_docs:
        print(f"derived repair vs its ceiling ({args.repair_docs:,} ids):", flush=True)
        figures["derived_repair"] = derived_repair.run(args.repair_docs, 3)
    if args.real_docs:
        print(f"the real model, v4 ({args.real_docs:,} docs):", flush=True)
        figures["real_model"] = real_model.run(args.real_docs)
    machine = f"{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · OpenSearch {opensearch_node.OPENSEARCH_VERSION}"
    figures["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "command": "python -m bench " + " ".join(argv or sys.argv[1:]),
        "seconds": round(time.perf_counter() - began),
    }

    table = ["| benchmark | measured | goal | met |", "|---|---|---|---|"]
    table += [
        f"| {what} | {measured} | {goal} | {'✓' if met else '✗'} |" for what, measured, goal, met in rows(figures)
    ]
    header = f"{figures['meta']['date']} — {machine} — `{figures['meta']['command'].strip()}` — {figures['meta']['seconds']} s"
    markdown = header + "\n\n" + "\n".join(table) + "\n"
    rollback.RESULTS.mkdir(exist_ok=True)
    (rollback.RESULTS / "summary.json").write_text(json.dumps(figures, indent=2))
    (rollback.RESULTS / "summary.md").write_text(markdown)
    print("\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
