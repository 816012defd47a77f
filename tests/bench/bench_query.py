"""Query benchmark: ingest, warm `history` latency vs raw DuckDB, and dataframe vs FlorDB 4.0.1.

Run from the repository root (not part of the unit-test suite):

    .venv/bin/python tests/bench/bench_query.py            # full run, a few minutes
    .venv/bin/python tests/bench/bench_query.py --quick    # 10x smaller

It measures:
  1. ingest: 100 runs x 10 epochs x 1,000 steps of `flor.log("loss", ...)` (1M records, plus
     5 `flor.arg`s per run) recorded by real `flor` subprocesses (2 at a time) into a scratch
     git repo; the first `florsql.connect(repo).execute(...)` ingests them all, timed alone;
  2. warm latency of a `history` scan and a GROUP BY over it (median of 7 after 2 warm-ups,
     fetched as a DataFrame), against hand-written DuckDB SQL over the catalog tables on a plain
     read-only connection, plus florsql's per-execute work (`refresh()`, `prepare()`) alone;
  3. `flor.dataframe("loss")` over 100k records (10 runs x 10 x 1,000) against FlorDB 4.0.1's
     `flordb.dataframe("loss")` over the same records recorded by FlorDB in its own venv
     (.bench/flordb-venv, made by bench_record.py); each timed in its own subprocess.
Results are printed as a table and written to .bench/query_results.json.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
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
FLORDB_VENV = BENCH_DIR / "flordb-venv"
RESULTS_PATH = BENCH_DIR / "query_results.json"
FLORDB_VERSION = "4.0.1"
SCRIPT_NAME = "train_query_bench.py"
TARGET_QUERY_MS = 200.0
TARGET_DF_SPEEDUP = 20.0

# The training script each recording subprocess runs; `{module}` is flor or flordb.
TRAIN_SCRIPT = '''\
import os
import random

import {module} as flor

EPOCHS, STEPS = int(os.environ["BENCH_EPOCHS"]), int(os.environ["BENCH_STEPS"])
lr = flor.arg("lr", 0.001)
hidden = flor.arg("hidden", 128)
batch_size = flor.arg("batch_size", 32)
momentum = flor.arg("momentum", 0.9)
seed = flor.arg("seed", 0)
rng = random.Random(seed)
for epoch in flor.loop("epoch", range(EPOCHS)):
    for step in flor.loop("step", range(STEPS)):
        t = epoch * STEPS + step
        flor.log("loss", 1.0 / (1.0 + lr * t) + 0.01 * rng.random())
'''

# Timed in a subprocess whose cwd is the scratch repo; argv: module, reps, out path.
DATAFRAME_TIMER = '''\
import json, sys, time
impl, reps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if impl == "flordb":
    import flordb
    call = lambda: flordb.dataframe("loss")
elif impl == "flor":
    import flor
    call = lambda: flor.dataframe("loss")
else:
    import florsql
    SQL = "SELECT projid, runid, tstamp, vid, filename, epoch, step, loss FROM history"
    def call():
        with florsql.connect(".") as conn:
            return conn.execute(SQL).df()
times, rows, cols = [], 0, []
for _ in range(reps):
    t0 = time.perf_counter()
    df = call()
    times.append(time.perf_counter() - t0)
    rows, cols = len(df), [str(c) for c in df.columns]
with open(out, "w") as fh:
    json.dump({"times": times, "rows": rows, "columns": cols}, fh)
'''


@dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one benchmark run."""

    runs: int = 100
    epochs: int = 10
    steps: int = 1_000
    parallel: int = 2
    warmups: int = 2
    reps: int = 7
    df_runs: int = 10
    df_epochs: int = 10
    df_steps: int = 1_000
    df_reps: int = 5  # the first flor call also ingests: reported apart, left out of the median


QUICK = Plan(runs=10, df_epochs=10, df_steps=100)


@dataclass(frozen=True)
class RunArgs:
    """The five `flor.arg`s of one run."""

    lr: float
    hidden: int
    batch_size: int
    momentum: float
    seed: int

    def kwargs(self) -> list[str]:
        return ["--kwargs", *(f"{k}={v}" for k, v in asdict(self).items())]


def run_args(n: int) -> list[RunArgs]:
    """Varied, reproducible args for `n` runs (lr log-uniform in [1e-4, 1e-1])."""
    rng = random.Random(1234)
    return [RunArgs(lr=round(10 ** rng.uniform(-4, -1), 7), hidden=rng.choice([64, 128, 256, 512]),
                    batch_size=rng.choice([16, 32, 64, 128]),
                    momentum=round(rng.uniform(0.8, 0.99), 3), seed=i) for i in range(n)]


def lr_threshold(args: Sequence[RunArgs]) -> float:
    """A threshold with half of the runs' lr above it (the midpoint of the two middle lrs)."""
    lrs = sorted(a.lr for a in args)
    mid = len(lrs) // 2
    return (lrs[mid - 1] + lrs[mid]) / 2 if len(lrs) > 1 else lrs[0] / 2


# ---------------------------------------------------------------------------------------------
# Scratch repositories and recording subprocesses
# ---------------------------------------------------------------------------------------------


def make_repo(path: Path, module: str) -> Path:
    """A scratch git repo whose one committed file is the training script for `module`."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "bench"), ("user.email", "bench@localhost"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    (path / SCRIPT_NAME).write_text(TRAIN_SCRIPT.format(module=module))
    git(path, "add", SCRIPT_NAME)
    git(path, "commit", "-q", "-m", "benchmark script")
    return path


def record_run(py: Path, repo: Path, args: RunArgs, epochs: int, steps: int) -> float:
    """One recording subprocess (stdout and FlorDB's progress bars discarded); its seconds."""
    env = child_env({"BENCH_EPOCHS": str(epochs), "BENCH_STEPS": str(steps),
                     "FLOR_RUN": f"run{args.seed:03d}"})
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), SCRIPT_NAME, *args.kwargs()], cwd=repo, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"recording run {args} in {repo} failed:\n{tail}")
    return time.perf_counter() - t0


def record_runs(py: Path, repo: Path, args: Sequence[RunArgs], epochs: int, steps: int,
                parallel: int) -> dict:
    """Record one run per `args`, `parallel` processes at a time."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        secs = list(pool.map(lambda a: record_run(py, repo, a, epochs, steps), args))
    return {"runs": len(args), "records": len(args) * epochs * steps,
            "wall_s": time.perf_counter() - t0, "run_median_s": median(secs)}


def flordb_python() -> Path | None:
    """FlorDB 4.0.1's venv, as bench_record.py makes it (it is not created here)."""
    py = FLORDB_VENV / "bin" / "python"
    check = ("import importlib.metadata as m, sys; "
             f"sys.exit(m.version('flordb') != '{FLORDB_VERSION}')")
    if py.exists() and subprocess.run([str(py), "-c", check], cwd=BENCH_DIR).returncode == 0:
        return py
    log(f"no {FLORDB_VENV} with flordb=={FLORDB_VERSION}: run tests/bench/bench_record.py "
        "once to create it; skipping FlorDB")
    return None


# ---------------------------------------------------------------------------------------------
# Part 1 and 2: ingest and warm query latency
# ---------------------------------------------------------------------------------------------


def time_calls(fn: Callable[[], Any], reps: int, warmups: int) -> dict:
    """Median/min/max seconds of `reps` calls of `fn` after `warmups` untimed ones."""
    for _ in range(warmups):
        fn()
    secs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t0)
    return {"median_s": median(secs), "min_s": min(secs), "max_s": max(secs), "all_s": secs}


def history_queries(threshold: float) -> dict[str, str]:
    return {
        "scan": f"SELECT runid, step, loss, lr FROM history WHERE lr > {threshold!r}",
        "group_by": (f"SELECT runid, lr, avg(loss), min(loss) FROM history "
                     f"WHERE lr > {threshold!r} GROUP BY ALL"),
    }


def raw_queries(threshold: float) -> dict[str, str]:
    """The same results written by hand over `logs`, `contexts` and `runs`."""
    pivot = (
        "WITH a AS (SELECT tstamp, value_num AS lr FROM logs "
        "WHERE depth = 0 AND value_name = 'lr' AND kind = 'arg'), "
        "l AS (SELECT tstamp, ctx_id, value_num AS loss FROM logs "
        "WHERE depth = 2 AND value_name = 'loss'), "
        "h AS (SELECT r.runid, c.iteration AS step, l.loss, a.lr FROM l "
        "JOIN contexts AS c USING (tstamp, ctx_id) JOIN a USING (tstamp) "
        f"JOIN runs AS r USING (tstamp) WHERE a.lr > {threshold!r}) "
    )
    return {"scan": pivot + "SELECT * FROM h",
            "group_by": pivot + "SELECT runid, lr, avg(loss), min(loss) FROM h GROUP BY ALL"}


def ingest_first_query(repo: Path) -> tuple[Any, dict]:
    """Open florsql on `repo` and time the first statement, which ingests every record."""
    import pandas  # noqa: F401  (imported lazily by the first query: not part of ingest)
    import pyarrow  # noqa: F401

    import florsql

    t0 = time.perf_counter()
    conn = florsql.connect(str(repo))
    t_open = time.perf_counter() - t0
    t1 = time.perf_counter()
    records = conn.execute("SELECT count(*) FROM logs WHERE kind = 'log'").fetchall()[0][0]
    t_first = time.perf_counter() - t1
    return conn, {"open_s": t_open, "first_query_s": t_first, "log_records": records}


def bench_florsql_queries(conn: Any, queries: dict[str, str], plan: Plan) -> dict:
    """Warm latency of each query through florsql (df, arrow, fetchall), and its overhead."""
    out: dict[str, Any] = {}
    for name, sql in queries.items():
        rows = len(conn.execute(sql).df())
        out[name] = {
            "sql": sql, "rows": rows,
            "df": time_calls(lambda s=sql: conn.execute(s).df(), plan.reps, plan.warmups),
            "arrow": time_calls(lambda s=sql: conn.execute(s).arrow(), plan.reps, plan.warmups),
            "fetchall": time_calls(lambda s=sql: conn.execute(s).fetchall(), plan.reps,
                                   plan.warmups),
            "prepare": time_calls(lambda s=sql: conn.session.prepare(s), plan.reps, plan.warmups),
            "rewritten_sql": conn.session.prepare(sql).sql,
        }
    out["refresh"] = time_calls(conn.refresh, plan.reps, plan.warmups)
    return out


def cold_connection(repo: Path, plan: Plan) -> dict:
    """Median seconds of connect, refresh() and close() with nothing new to ingest.

    Every `flor.dataframe` / `flor.query` call and every CLI statement pays this.
    """
    import florsql

    parts: dict[str, list[float]] = {"connect": [], "refresh": [], "close": [], "total": []}
    for i in range(plan.reps + 1):
        t0 = time.perf_counter()
        conn = florsql.connect(str(repo))
        t1 = time.perf_counter()
        conn.refresh()
        t2 = time.perf_counter()
        conn.close()
        t3 = time.perf_counter()
        if i:  # the first is a warm-up
            for key, secs in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                parts[key].append(secs)
    return {f"{k}_s": median(v) for k, v in parts.items()}


def bench_raw_duckdb(con: Any, sqls: dict[str, str], plan: Plan) -> dict:
    """Latency of each SQL on `con`, a plain DuckDB connection to florsql's in-memory copy
    of the catalog (no florsql layer: no ingest check, no rewrite)."""
    try:
        out = {}
        for name, sql in sqls.items():
            out[name] = {"sql": sql, "rows": len(con.execute(sql).df()),
                         "df": time_calls(lambda s=sql: con.execute(s).df(), plan.reps,
                                          plan.warmups)}
        return out
    finally:
        con.close()


def bench_ingest_and_queries(scratch: Path, plan: Plan) -> dict:
    """Record the 1M-record project, ingest it, and time the warm queries."""
    args = run_args(plan.runs)
    repo = make_repo(scratch / "history", "flor")
    log(f"recording {plan.runs} runs x {plan.epochs} epochs x {plan.steps} steps with flor "
        f"({plan.parallel} in parallel) ...")
    recorded = record_runs(Path(sys.executable), repo, args, plan.epochs, plan.steps,
                           plan.parallel)
    log(f"recorded {recorded['records']:,} records in {recorded['wall_s']:.1f} s; ingesting ...")
    conn, ingest = ingest_first_query(repo)
    ingest["records_per_s"] = ingest["log_records"] / ingest["first_query_s"]
    threshold = lr_threshold(args)
    queries = history_queries(threshold)
    log("timing warm queries through florsql ...")
    try:
        flor = bench_florsql_queries(conn, queries, plan)
        log("timing the hand-written SQL and florsql's rewritten SQL on raw DuckDB ...")
        raw = bench_raw_duckdb(conn.session.cursor(), raw_queries(threshold), plan)
        rewritten = bench_raw_duckdb(conn.session.cursor(),
                                     {k: flor[k]["rewritten_sql"] for k in queries}, plan)
    finally:
        conn.close()
    log("timing a cold connection (connect + refresh + close) ...")
    cold = cold_connection(repo, plan)
    return {"recorded": recorded, "ingest": ingest, "threshold": threshold,
            "warmups": plan.warmups,
            "runs_above": sum(a.lr > threshold for a in args), "florsql": flor, "cold": cold,
            "raw": raw,
            "rewritten_on_raw": rewritten}


# ---------------------------------------------------------------------------------------------
# Part 3: dataframe vs FlorDB
# ---------------------------------------------------------------------------------------------


def time_dataframe(py: Path, repo: Path, impl: str, reps: int) -> dict:
    """Run DATAFRAME_TIMER for `impl` in `repo`: it imports first and times only the calls."""
    out = repo.parent / f"df-{impl}.json"
    proc = subprocess.run([str(py), "-c", DATAFRAME_TIMER, impl, str(reps), str(out)],
                          cwd=repo, env=child_env({}), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=600)
    if proc.returncode != 0 or not out.exists():
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"dataframe timing of {impl} failed:\n{tail}")
    return json.loads(out.read_text())


def flor_has_dataframe() -> bool:
    probe = "import sys, flor; sys.exit(not callable(getattr(flor, 'dataframe', None)))"
    return subprocess.run([sys.executable, "-c", probe], cwd=ROOT).returncode == 0


def bench_dataframe(scratch: Path, plan: Plan, flordb_py: Path | None) -> dict:
    """flor.dataframe("loss") (or its florsql equivalent) vs flordb.dataframe("loss")."""
    args = run_args(plan.df_runs)
    out: dict[str, Any] = {"records": plan.df_runs * plan.df_epochs * plan.df_steps}
    impl = "flor" if flor_has_dataframe() else "florsql"
    out["florsql_call"] = ('flor.dataframe("loss")' if impl == "flor" else
                           'florsql.connect(".").execute("SELECT projid, runid, tstamp, vid, '
                           'filename, epoch, step, loss FROM history").df()')
    repo = make_repo(scratch / "df-flor", "flor")
    log(f"recording {out['records']:,} records with flor for the dataframe comparison ...")
    out["florsql_record"] = record_runs(Path(sys.executable), repo, args, plan.df_epochs,
                                        plan.df_steps, plan.parallel)
    log(f"timing {out['florsql_call']} ...")
    res = time_dataframe(Path(sys.executable), repo, impl, plan.df_reps)
    out["florsql"] = {**res, "first_s": res["times"][0], "median_s": median(res["times"][1:])}
    if flordb_py is None:
        return out
    repo = make_repo(scratch / "df-flordb", "flordb")
    log(f"recording {out['records']:,} records with FlorDB {FLORDB_VERSION} (one at a time: "
        "it commits to git) ...")
    out["flordb_record"] = record_runs(flordb_py, repo, args, plan.df_epochs, plan.df_steps, 1)
    log(f"timing flordb.dataframe(\"loss\") ({plan.df_reps} calls) ...")
    res = time_dataframe(flordb_py, repo, "flordb", plan.df_reps)
    out["flordb"] = {**res, "median_s": median(res["times"])}
    out["speedup_warm"] = out["flordb"]["median_s"] / out["florsql"]["median_s"]
    out["speedup_first"] = out["flordb"]["median_s"] / out["florsql"]["first_s"]
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def ingest_lines(q: dict) -> list[str]:
    rec, ing = q["recorded"], q["ingest"]
    return [
        f"setup: {rec['runs']} runs x {rec['records'] // rec['runs']:,} loss records "
        f"(epoch x step loops) + 5 args each, recorded in {rec['wall_s']:.1f} s "
        f"(median {rec['run_median_s']:.2f} s a run, 2 in parallel)",
        f"ingest (first query after connect): {ing['first_query_s']:.2f} s for "
        f"{ing['log_records']:,} records = {ing['records_per_s']:,.0f} records/s "
        f"(connect {ms(ing['open_s'])})",
    ]


def query_lines(q: dict) -> list[str]:
    fs, raw, rw = q["florsql"], q["raw"], q["rewritten_on_raw"]
    lines = [f"warm queries, lr > {q['threshold']:.6g} ({q['runs_above']} runs), median of "
             f"{len(fs['scan']['df']['all_s'])} after {q['warmups']} warm-ups, same connection:"]
    for name in ("scan", "group_by"):
        f_s, r_s = fs[name]["df"]["median_s"], raw[name]["df"]["median_s"]
        ok = f_s * 1e3 <= TARGET_QUERY_MS
        lines += [
            f"  {name} ({fs[name]['rows']:,} rows): florsql .df() {ms(f_s)} "
            f"(target <= {TARGET_QUERY_MS:.0f} ms: {verdict(ok)}) | .arrow() "
            f"{ms(fs[name]['arrow']['median_s'])} | .fetchall() "
            f"{ms(fs[name]['fetchall']['median_s'])}",
            f"    raw DuckDB .df(): hand-written pivot {ms(r_s)} (florsql/raw {f_s / r_s:.2f}x) | "
            f"florsql's rewritten SQL {ms(rw[name]['df']['median_s'])}",
        ]
    lines.append(
        f"  per-execute work: conn.refresh() {ms(fs['refresh']['median_s'])}, "
        f"session.prepare() scan {ms(fs['scan']['prepare']['median_s'])}, "
        f"group_by {ms(fs['group_by']['prepare']['median_s'])}")
    cold = q["cold"]
    lines.append(
        f"  fresh connection, nothing new (paid by every flor.dataframe call): "
        f"{ms(cold['total_s'])} = connect {ms(cold['connect_s'])} + refresh "
        f"{ms(cold['refresh_s'])} + close {ms(cold['close_s'])}")
    return lines


def dataframe_lines(d: dict) -> list[str]:
    fs = d["florsql"]
    lines = [f"dataframe over {d['records']:,} records ({fs['rows']:,} rows): "
             f"{d['florsql_call']}",
             f"  florsql warm median {ms(fs['median_s'])}, first call {ms(fs['first_s'])} "
             "(includes ingest)"]
    if "flordb" not in d:
        return [*lines, "  FlorDB: skipped (no venv)"]
    fd = d["flordb"]
    ok = d["speedup_warm"] >= TARGET_DF_SPEEDUP
    lines += [
        f"  FlorDB {FLORDB_VERSION} flordb.dataframe(\"loss\") median {ms(fd['median_s'])} "
        f"({fd['rows']:,} rows)",
        f"  speedup: {d['speedup_warm']:.1f}x warm, {d['speedup_first']:.1f}x vs florsql's first "
        f"call   (target >= {TARGET_DF_SPEEDUP:.0f}x: {verdict(ok)})",
    ]
    return lines


def format_table(results: dict) -> str:
    m = results["machine"]
    head = (f"florsql query benchmark ({results['mode']} mode, {m['cpus']} CPUs, python "
            f"{m['python']}, duckdb {m['duckdb']})")
    q = results["queries"]
    return "\n".join([head, "-" * 100, *ingest_lines(q), *query_lines(q),
                      *dataframe_lines(results["dataframe"])])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller data")
    parser.add_argument("--no-flordb", action="store_true", help="skip the FlorDB comparison")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def duckdb_version() -> str:
    import duckdb

    return duckdb.__version__


def main(argv: Sequence[str] | None = None) -> int:
    benchlib.PREFIX = "[bench_query]"
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    flordb_py = None if args.no_flordb else flordb_python()
    scratch = Path(tempfile.mkdtemp(prefix="bench-query-"))
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "plan": asdict(plan),
                               "machine": machine_info(duckdb=duckdb_version())}
    try:
        results["queries"] = bench_ingest_and_queries(scratch, plan)
        results["dataframe"] = bench_dataframe(scratch, plan, flordb_py)
    finally:
        end_scratch(scratch, args.keep)
    publish_results(results, started, format_table, RESULTS_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
