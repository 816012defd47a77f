"""Catalog benchmark: the "Must hold" bars of the catalog redesign (issue 13).

Run from the repository root (not part of the unit-test suite):

    .venv/bin/python tests/bench/bench_catalog.py            # 1M and 10M records, ~2-3 minutes
    .venv/bin/python tests/bench/bench_catalog.py --quick    # smaller, under a minute

It uses public surfaces only (real `flor` subprocesses record; `florsql.connect` reads; plain
`duckdb` holds the baselines), so it runs unchanged against a new storage:
  1. ingest: one run of 1M `flor.log("loss", x)` records (10 x 100k steps), recorded while a
     warm `florsql.connect` is open on the project; `conn.refresh()` alone is timed (ingest
     and publish; the median of 5 fresh projects), with the peak RSS growth of this process
     during it; then the disk taken by the published catalog against the parts, and the time a
     second connection takes to load it;
  2. `SELECT epoch, avg(loss) FROM history GROUP BY epoch` and one run's two-metric learning
     curve at step grain, over 1M and 10M records (10 and 100 runs x 10 x 5,000 steps x
     `loss`, `acc`), vs the same queries over flat LONG and WIDE DuckDB tables of the same
     records (exported through `history`), alternated, median of 7 after 2 warm-ups;
  3. `flor.log` CPU cost: a 10 x 100k `flor.loop` with and without one `flor.log` a step,
     process and main-thread CPU time of each subprocess, alternated, medians.
Results are printed as a table and written to .bench/catalog_results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import (
    child_env,
    end_scratch,
    git,
    log,
    machine_info,
    median,
    publish_results,
    verdict,
)

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / ".bench"
RESULTS_PATH = BENCH_DIR / "catalog_results.json"
TARGET_INGEST_RPS = 2_000_000.0
TARGET_INGEST_MIB = 1024.0  # while ingesting 10M records
TARGET_LONG_RATIO = 2.0
TARGET_LOG_NS = 500.0
BUSY_LOAD = 1.0  # 1-minute load average above which another process competes for the CPUs

# The training script of each mode: BODIES[mode] inside a 2-level flor.loop. With BENCH_OUT, the
# process's CPU times go there from an exit handler registered before flor's, so it runs after
# flor has flushed its records (in the main thread, as thread_time needs).
TRAIN_SCRIPT = '''\
import atexit, json, os, time
OUT, EPOCHS, STEPS = os.environ.get("BENCH_OUT"), *map(int, os.environ["BENCH_SIZE"].split("x"))
def report():
    with open(OUT, "w") as fh:
        json.dump({{"main_s": time.thread_time(), "total_s": time.process_time()}}, fh)
if OUT:
    atexit.register(report)
import flor
for epoch in flor.loop("epoch", range(EPOCHS)):
    for step in flor.loop("step", range(STEPS)):
{body}
'''
BODIES = {
    "nolog": ["pass"],
    "log": ['flor.log("loss", 0.5)'],
    "ingest": ['flor.log("loss", 1.0 / (1.0 + epoch * STEPS + step))'],
    "curve": ["t = 0.001 * (epoch * STEPS + step)", 'flor.log("loss", 1.0 / (1.0 + t))',
              'flor.log("acc", 1.0 - 0.5 / (1.0 + t))'],
}


@dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one benchmark run."""

    ingest_epochs: int = 10
    ingest_steps: int = 100_000
    ingest_reps: int = 5
    curve_epochs: int = 10
    curve_steps: int = 5_000  # x 2 metrics: 100k records a run
    curve_runs: tuple[int, ...] = (10, 100)  # 1M and 10M records
    parallel: int = 2
    warmups: int = 2
    reps: int = 7
    log_epochs: int = 10
    log_steps: int = 100_000
    log_procs: int = 5


QUICK = Plan(ingest_steps=20_000, ingest_reps=3, curve_steps=500, curve_runs=(10,),
             log_procs=3)


# --- scratch repository and recording subprocesses --------------------------------------------


def make_repo(path: Path) -> Path:
    """A scratch git repo with the training script of each mode committed (train_MODE.py)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "bench"), ("user.email", "bench@localhost"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    for mode, body in BODIES.items():
        lines = "".join(f"        {line}\n" for line in body)
        (path / f"train_{mode}.py").write_text(TRAIN_SCRIPT.format(body=lines))
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "benchmark scripts")
    return path


def record(repo: Path, mode: str, epochs: int, steps: int, runid: str,
           out: Path | None = None) -> float:
    """Run the script of `mode` once (a flor run named `runid`); its wall seconds."""
    env = child_env({"BENCH_SIZE": f"{epochs}x{steps}", "FLOR_RUN": runid,
                     **({"BENCH_OUT": str(out)} if out else {})})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, f"train_{mode}.py"], cwd=repo, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{mode} run {runid} in {repo} failed:\n{tail}")
    return time.perf_counter() - t0


def peak_rss_growth(fn: Callable[[], Any]) -> tuple[Any, float, str]:
    """`fn()`, and how much this process's peak RSS grew during it (MiB, and how measured)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return result, (after - before) / 1024, "getrusage ru_maxrss after - before (a floor)"
    before = proc_status_kib("VmRSS")
    result = fn()
    return result, (proc_status_kib("VmHWM") - before) / 1024, \
        "/proc/self/status VmHWM after (reset via clear_refs) - VmRSS before"


def proc_status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"\n{field}:", 1)[1].split()[0])


# --- 1. ingest of one 1M-record run in a warm process -----------------------------------------


def bench_ingest(scratch: Path, plan: Plan) -> dict:
    """One ingest per fresh project, `plan.ingest_reps` times: the median refresh is the
    figure (a single one on 2 cores varies by +-30%), every one is printed beside it."""
    runs = [ingest_once(scratch / f"ingest-{i}", plan) for i in range(plan.ingest_reps)]
    secs = [r["refresh_s"] for r in runs]
    middle = sorted(runs, key=lambda r: r["refresh_s"])[len(runs) // 2]
    return {**middle, "refresh_all_s": secs, "records_per_s": middle["records"] / middle[
        "refresh_s"], "rss_growth_mib": max(r["rss_growth_mib"] for r in runs)}


def ingest_once(path: Path, plan: Plan) -> dict:
    import florsql

    repo = make_repo(path)
    record(repo, "ingest", 1, 1, "seed")  # one `loss` record: a valid project to connect to
    with florsql.connect(str(repo)) as conn:
        conn.execute("SELECT count(loss) FROM history").fetchall()  # warm: imports, catalog
        n = plan.ingest_epochs * plan.ingest_steps
        log(f"recording one run of {n:,} loss records ...")
        rec_s = record(repo, "ingest", plan.ingest_epochs, plan.ingest_steps, "big")
        log("ingesting it (conn.refresh()) ...")
        t0 = time.perf_counter()
        report, mib, how = peak_rss_growth(conn.refresh)
        secs = time.perf_counter() - t0
        t0 = time.perf_counter()  # the records are still Arrow tables (the tail) being folded
        first = conn.execute(EPOCH_AVG).fetchall()
        first_s = time.perf_counter() - t0
        sql = "SELECT count(loss) FROM history WHERE runid = 'big'"
        count = conn.execute(sql).fetchall()[0][0]
        time.sleep(FOLD_WAIT_S)  # the fold has moved them into DuckDB's table by now
        folded_s = median([timed(lambda: conn.execute(EPOCH_AVG).fetchall()) for _ in range(7)])
        again = conn.execute(EPOCH_AVG).fetchall()  # sums in another order: the last bits differ
        assert len(again) == len(first) and all(a[0] == b[0] and math.isclose(
            a[1], b[1], rel_tol=1e-12) for a, b in zip(again, first, strict=True))
    log("opening a second connection, which loads the published segments ...")
    t0 = time.perf_counter()
    with florsql.connect(str(repo)) as other:
        other.refresh()
        load_s = time.perf_counter() - t0
        assert other.execute(sql).fetchall()[0][0] == count
    return {"records": count, "expected": n, "record_s": rec_s, "refresh_s": secs,
            "first_query_s": first_s, "folded_query_s": folded_s,
            "rss_growth_mib": mib, "rss_method": how, "report": repr(report), "load_s": load_s,
            **disk_use(repo)}


EPOCH_AVG = "SELECT epoch, avg(loss) FROM history GROUP BY epoch ORDER BY epoch"
FOLD_WAIT_S = 5.0


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def disk_use(repo: Path) -> dict:
    """Bytes of the record parts and of the published catalog (segments, state, manifest)."""
    home = repo / ".flor"
    parts = sum(p.stat().st_size for p in home.glob("runs/*/parts/*"))
    catalog = sum(p.stat().st_size for p in (home / "catalog").rglob("*") if p.is_file())
    return {"parts_bytes": parts, "catalog_bytes": catalog}


# --- 2. history queries vs flat long and wide DuckDB tables -----------------------------------


def queries(runid: str) -> dict[str, dict[str, str]]:
    """Each query as florsql (`history`), the long table and the wide table answer it."""
    avg = "SELECT epoch, avg({}) FROM {} GROUP BY epoch ORDER BY epoch"
    curve = f"SELECT epoch, step, loss, acc FROM {{}} WHERE runid = '{runid}' ORDER BY epoch, step"
    pivot = ("(SELECT runid, epoch, step, max(value) FILTER (WHERE name = 'loss') AS loss, "
             "max(value) FILTER (WHERE name = 'acc') AS acc FROM long "
             f"WHERE runid = '{runid}' AND name IN ('loss', 'acc') GROUP BY ALL)")
    return {
        "epoch_avg": {"florsql": avg.format("loss", "history"), "wide": avg.format("loss", "wide"),
                      "long": avg.format("value", "long WHERE name = 'loss'")},
        "curve": {"florsql": curve.format("history"), "wide": curve.format("wide"),
                  "long": curve.format(pivot)},
    }


def export_flat(conn: Any, path: Path) -> dict:
    """WIDE (runid, epoch, step, loss, acc) and LONG (runid, epoch, step, name, value) tables of
    the records, read through `history`, each sorted by run, epoch, step, in a DuckDB file."""
    import duckdb

    t0 = time.perf_counter()
    reader = conn.execute("SELECT runid, epoch, step, loss, acc FROM history").fetch_record_batch()
    with duckdb.connect(str(path)) as con:
        con.register("exported", reader)
        con.execute("CREATE TABLE wide AS SELECT * FROM exported ORDER BY runid, epoch, step")
        con.execute("CREATE TABLE long AS SELECT runid, epoch, step, name, value FROM "
                    "(UNPIVOT wide ON loss, acc INTO NAME name VALUE value) "
                    "ORDER BY runid, epoch, step, name")
        rows = con.execute("SELECT (SELECT count(*) FROM wide), (SELECT count(*) FROM long)")
        wide_rows, long_rows = rows.fetchall()[0]
    return {"wide_rows": wide_rows, "long_rows": long_rows, "export_s": time.perf_counter() - t0}


def fetch_arrow(con: Any, sql: str) -> Any:
    with warnings.catch_warnings():  # DuckDB notes the copy of a DB-API result, as florsql's
        warnings.simplefilter("ignore")
        return con.execute(sql).to_arrow_table()


def time_alternating(calls: dict[str, Callable[[], Any]], plan: Plan) -> dict[str, list[float]]:
    """Seconds of each call, rounds rotated so none always runs first; warm-ups untimed."""
    names = list(calls)
    secs: dict[str, list[float]] = {name: [] for name in names}
    for i in range(plan.warmups + plan.reps):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            calls[name]()
            if i >= plan.warmups:
                secs[name].append(time.perf_counter() - t0)
    return secs


def results_agree(tables: dict[str, Any]) -> bool:
    """The answers hold the same numbers, in the same order (to 1e-9, relative)."""
    vals = [[float(v) for col in t.columns for v in col.to_pylist()] for t in tables.values()]
    return all(len(v) == len(vals[0]) and all(
        math.isclose(x, y, rel_tol=1e-9) for x, y in zip(v, vals[0], strict=True))
        for v in vals[1:])


def bench_history(scratch: Path, plan: Plan, runs: int) -> dict:
    import duckdb

    repo = make_repo(scratch / f"curve-{runs}")
    per_run = plan.curve_epochs * plan.curve_steps * 2
    log(f"recording {runs} runs x {per_run:,} records ({plan.parallel} at a time) ...")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        list(pool.map(lambda i: record(repo, "curve", plan.curve_epochs, plan.curve_steps,
                                       f"run{i:03d}"), range(runs)))
    out: dict[str, Any] = {"runs": runs, "records": runs * per_run,
                           "record_s": time.perf_counter() - t0}
    log(f"recorded in {out['record_s']:.0f} s; ingesting (connect + refresh) ...")
    t0 = time.perf_counter()
    conn, mib, how = peak_rss_growth(lambda: open_ingested(repo))
    out.update(ingest_s=time.perf_counter() - t0, rss_growth_mib=mib, rss_method=how,
               **disk_use(repo))
    t0 = time.perf_counter()
    reader, mib, how = peak_rss_growth(lambda: open_ingested(repo))  # loads, ingests nothing
    reader.close()
    out.update(load_s=time.perf_counter() - t0, load_rss_growth_mib=mib)
    out["runid"] = f"run{runs // 2:03d}"
    with conn:
        log("exporting the records into flat DuckDB tables ...")
        out["flat"] = export_flat(conn, scratch / f"flat-{runs}.duckdb")
        with duckdb.connect(str(scratch / f"flat-{runs}.duckdb"), read_only=True) as flat:
            for name, sqls in queries(out["runid"]).items():
                out[name] = time_query(name, sqls, conn, flat, plan)
    return out


def open_ingested(repo: Path) -> Any:
    """`florsql.connect(repo)` after `refresh()`: it has ingested every record."""
    import florsql

    conn = florsql.connect(str(repo))
    conn.refresh()
    return conn


def time_query(name: str, sqls: dict[str, str], conn: Any, flat: Any, plan: Plan) -> dict:
    """One query through florsql and on the long and wide tables: medians, and a check."""
    log(f"timing {name} (florsql, long, wide) ...")
    calls = {"florsql": lambda: conn.execute(sqls["florsql"]).arrow(),
             "long": lambda: fetch_arrow(flat, sqls["long"]),
             "wide": lambda: fetch_arrow(flat, sqls["wide"])}
    answers = {k: f() for k, f in calls.items()}
    secs = time_alternating(calls, plan)
    return {"sql": sqls, "rows": answers["florsql"].num_rows, "agree": results_agree(answers),
            "all_s": secs, **{f"{k}_s": median(v) for k, v in secs.items()}}


# --- 3. flor.log CPU cost ---------------------------------------------------------------------


def bench_logcost(scratch: Path, plan: Plan) -> dict:
    repo = make_repo(scratch / "logcost")
    samples: dict[str, list[dict]] = {"log": [], "nolog": []}
    for i in range(plan.log_procs):
        for mode in ("log", "nolog") if i % 2 == 0 else ("nolog", "log"):
            out = scratch / f"cpu-{mode}-{i}.json"
            log(f"flor.log cost: {mode} process {i + 1}/{plan.log_procs} ...")
            record(repo, mode, plan.log_epochs, plan.log_steps, f"{mode}{i}", out)
            cpu = json.loads(out.read_text())
            samples[mode].append({**cpu, "bg_s": cpu["total_s"] - cpu["main_s"]})
    calls = plan.log_epochs * plan.log_steps
    med = {mode: {k: median([s[k] for s in samples[mode]]) for k in ("main_s", "bg_s", "total_s")}
           for mode in samples}
    inc = {name: (med["log"][k] - med["nolog"][k]) / calls * 1e9
           for name, k in (("foreground", "main_s"), ("background", "bg_s"), ("total", "total_s"))}
    return {"calls": calls, "samples": samples, "median": med, "ns_per_call": inc}


# --- report -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def ingest_lines(r: dict) -> list[str]:
    rps = r["records_per_s"]
    return [
        f"1. ingest: one run of {r['records']:,} records"
        f"{'' if r['records'] == r['expected'] else ' (expected ' + str(r['expected']) + '!)'}"
        ", conn.refresh() in a warm process, median of "
        f"{len(r['refresh_all_s'])} fresh projects: "
        f"{r['refresh_s']:.2f} s = {rps:,.0f} records/s (target >= {TARGET_INGEST_RPS:,.0f}: "
        f"{verdict(rps >= TARGET_INGEST_RPS)}, {rps / TARGET_INGEST_RPS:.3f}x of target); "
        f"each: {', '.join(f'{x:.2f}' for x in r['refresh_all_s'])} s",
        f"   epoch_avg right after it (records still in the tail, folded meanwhile): "
        f"{ms(r['first_query_s'])}; once folded: {ms(r['folded_query_s'])}",
        f"   peak RSS growth during one, at most {r['rss_growth_mib']:.0f} MiB "
        f"({r['rss_method']}); "
        f"recording subprocess {r['record_s']:.1f} s",
        f"   published catalog {r['catalog_bytes'] / 2**20:.1f} MiB for "
        f"{r['parts_bytes'] / 2**20:.1f} MiB of parts (ratio "
        f"{r['catalog_bytes'] / max(r['parts_bytes'], 1):.2f}); a second connection loads it "
        f"in {r['load_s']:.2f} s",
    ]


def history_lines(h: dict, p: dict) -> list[str]:
    rps, mem = h["records"] / h["ingest_s"], h["rss_growth_mib"]
    mem_check = (f" (target <= {TARGET_INGEST_MIB:.0f} MiB at 10M: "
                 f"{verdict(mem <= TARGET_INGEST_MIB)})") if h["records"] >= 10_000_000 else ""
    lines = [
        f"2. {h['records']:,} records ({h['runs']} runs x {p['curve_epochs']} epochs x "
        f"{p['curve_steps']:,} steps x loss, acc), median of {p['reps']} after {p['warmups']} "
        "warm-ups, alternated, Arrow results:",
        f"   setup: recorded in {h['record_s']:.0f} s; ingest (connect + refresh) "
        f"{h['ingest_s']:.1f} s = {rps:,.0f} records/s, peak RSS growth {mem:.0f} MiB{mem_check}"
        f"; flat tables {h['flat']['long_rows']:,} long / {h['flat']['wide_rows']:,} wide rows",
        f"   published catalog {h['catalog_bytes'] / 2**20:.1f} MiB for "
        f"{h['parts_bytes'] / 2**20:.1f} MiB of parts (ratio "
        f"{h['catalog_bytes'] / max(h['parts_bytes'], 1):.2f}); another connection loads it in "
        f"{h['load_s']:.1f} s, peak RSS growth {h['load_rss_growth_mib']:.0f} MiB",
        f"   {'query':<10} {'rows':>7} {'florsql':>10} {'long':>9} {'wide':>9}   florsql/long "
        f"(target <= {TARGET_LONG_RATIO:.1f})  florsql/wide  answers agree",
    ]
    for name in ("epoch_avg", "curve"):
        q = h[name]
        ratio = q["florsql_s"] / q["long_s"]
        lines.append(
            f"   {name:<10} {q['rows']:>7,} {ms(q['florsql_s']):>10} {ms(q['long_s']):>9} "
            f"{ms(q['wide_s']):>9}   {ratio:>6.2f}x {verdict(ratio <= TARGET_LONG_RATIO):<20}"
            f"  {q['florsql_s'] / q['wide_s']:>11.2f}x  {'yes' if q['agree'] else 'NO'}")
    return [*lines, f"   (curve: loss and acc of run {h['runid']} at every step, in order)"]


def logcost_lines(c: dict) -> list[str]:
    ns, med = c["ns_per_call"], c["median"]
    per = [f"{mode} {med[mode]['total_s']:.2f} s (main {med[mode]['main_s']:.2f}, background "
           f"{med[mode]['bg_s']:.2f})" for mode in ("log", "nolog")]
    return [
        f"3. flor.log CPU increment per call ({c['calls']:,} calls, median of "
        f"{len(c['samples']['log'])} processes each): foreground {ns['foreground']:.0f} ns, "
        f"background {ns['background']:.0f} ns, total {ns['total']:.0f} ns "
        f"(target <= {TARGET_LOG_NS:.0f}: {verdict(ns['total'] <= TARGET_LOG_NS)}, "
        f"{ns['total'] / TARGET_LOG_NS:.2f}x of target)",
        f"   process CPU: {per[0]} vs {per[1]}",
    ]


def format_table(results: dict) -> str:
    m, p = results["machine"], results["plan"]
    head = (f"florsql catalog benchmark, issue 13 bars ({results['mode']} mode, {m['cpus']} CPUs, "
            f"python {m['python']}, duckdb {m['duckdb']}, load average {m['loadavg_start']:.1f} "
            f"at start, {m['loadavg_end']:.1f} at end)")
    busy = [f"WARNING: load average {m['loadavg_start']:.1f} > {BUSY_LOAD} at start: other "
            "processes share the CPUs and the numbers are unreliable"] * (
        m["loadavg_start"] > BUSY_LOAD)
    lines = [head, *busy, "-" * 100, *ingest_lines(results["ingest"])]
    for h in results["history"]:
        lines += history_lines(h, p)
    return "\n".join([*lines, *logcost_lines(results["logcost"])])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="200k-record ingest, 100k-record history only, 3 processes")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import duckdb

    benchlib.PREFIX = "[bench_catalog]"
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    if os.getloadavg()[0] > BUSY_LOAD:
        log(f"load average {os.getloadavg()[0]:.1f}: other processes are running, "
            "the numbers will be noisy")
    scratch = Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "plan": asdict(plan),
                               "machine": machine_info(duckdb=duckdb.__version__)}
    try:
        results["ingest"] = bench_ingest(scratch, plan)
        results["history"] = [bench_history(scratch, plan, runs) for runs in plan.curve_runs]
        results["logcost"] = bench_logcost(scratch, plan)
    finally:
        end_scratch(scratch, args.keep)
    publish_results(results, started, format_table, RESULTS_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
