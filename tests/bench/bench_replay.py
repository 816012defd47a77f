"""Hindsight-replay benchmark: `florsql replay` vs re-running, parallel workers, the estimate.

Run from the repository root (not part of the unit-test suite):

    .venv/bin/python tests/bench/bench_replay.py            # full run, about 5-8 minutes
    .venv/bin/python tests/bench/bench_replay.py --quick    # smoke run, about a minute

A scratch git repository holds a training script (20-64-1 MLP, BCE, SGD, batch 32, synthetic
data pre-generated with a fixed seed and shuffled per epoch with `torch.randperm`,
`flor.checkpointing(model, optimizer)`, `flor.log("loss", ...)` per step,
`torch.set_num_threads(1)`), committed; three runs with different `lr` are recorded. Then
today's script gets an uncommitted edit and, each time on a fresh copy of that history (so
nothing is already replayed), it measures:
  1. an epoch-level `flor.log("val_acc", accuracy(model, VX, VY))` after the inner loop,
     replayed with 1 worker, vs re-running the three runs with today's script (sum of their
     wall times); the replayed values must equal the fresh runs' values. Two replays:
     cold, the wall time of `florsql replay val_acc --workers 1` (a subprocess: interpreter,
     catalog, plan, one worker started from nothing); and warm, in this process through the
     library API: open the project, warm the session's replay workers and wait until they are
     warm (not timed), then time the service's plan_names + run;
  2. a step-level `flor.log("grad_norm", ...)` after `loss.backward()`, warm as above:
     2 workers vs 1 (and the values of both agree);
  3. the plan's estimate vs the measured wall time of each replay (cold: the `estimated N s`
     that `--dry-run` prints; warm: `ReplayPlan.estimated_seconds` planned with the workers
     warm).
Results are printed as a table and written to .bench/replay_results.json.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
RESULTS_PATH = BENCH_DIR / "replay_results.json"
SCRIPT = "train.py"
LRS = ("0.05", "0.1", "0.2")  # one recorded run each, named r<lr>
TARGET_EPOCH_SPEEDUP = 20.0
TARGET_WORKER_SPEEDUP = 1.6
TARGET_ESTIMATE = 0.30  # |estimate / measured - 1|
BUSY_LOAD = 1.0  # 1-minute load average above which another process competes for the CPUs
TIMEOUT = 600
# What a new torch process pays before its first iteration: the imports, and the first
# optimizer (torch imports its compiler stack there). A re-run pays it; a cold replay pays it
# once per worker; warm workers have paid it before the replay starts.
STARTUP_CODE = ("import torch, flor; "
                "torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)")


@dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one benchmark run."""

    epochs: int = 5
    steps: int = 2000
    epoch_reps: int = 3  # case 1: replay and re-run, each on a fresh copy of the history
    step_reps: int = 3  # case 2: one --workers 2 and one --workers 1 replay per repetition
    startup_reps: int = 3  # python -c STARTUP_CODE: the floor of a replay process


QUICK = Plan(epochs=3, steps=200, epoch_reps=1, step_reps=1, startup_reps=1)

# The recorded script. EPOCHS and STEPS are filled in per plan; `accuracy` and the validation
# set exist already (the script printed the final accuracy), only the per-epoch log is new.
RECORDED = '''\
import torch
from torch import nn

import flor

torch.set_num_threads(1)
torch.manual_seed(0)
EPOCHS, STEPS, BATCH = __EPOCHS__, __STEPS__, 32
lr = flor.arg("lr", 0.05)
W = torch.randn(20, 1)
X = torch.randn(STEPS * BATCH, 20)
Y = (X @ W + 0.5 * torch.randn(STEPS * BATCH, 1) > 0).float()
VX = torch.randn(4096, 20)
VY = (VX @ W > 0).float()
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=lr)
crit = nn.BCEWithLogitsLoss()


@torch.no_grad()
def accuracy(net, x, y):
    return ((net(x) > 0).float() == y).float().mean().item()


with flor.checkpointing(model=model, optimizer=opt):
    for epoch in flor.loop("epoch", range(EPOCHS)):
        order = torch.randperm(STEPS * BATCH)
        for step in flor.loop("step", range(STEPS)):
            idx = order[step * BATCH:(step + 1) * BATCH]
            opt.zero_grad()
            loss = crit(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
print("final accuracy", accuracy(model, VX, VY))
'''
LOSS_LINE = '            flor.log("loss", loss.item())\n'
VAL_LINE = '        flor.log("val_acc", accuracy(model, VX, VY))\n'
BACKWARD_LINE = "            loss.backward()\n"
GRAD_LINE = ('            flor.log("grad_norm", '
             "torch.stack([p.grad.norm() for p in model.parameters()]).norm().item())\n")
VALUES_SQL = (
    "SELECT r.runid, c.path, l.source, l.value_num FROM logs l JOIN runs r USING (tstamp) "
    "JOIN contexts c USING (tstamp, ctx_id) WHERE lower(l.value_name) = ? ORDER BY ALL")


def edit(text: str, anchor: str, added: str) -> str:
    """`text` with `added` inserted after the one line `anchor`."""
    if text.count(anchor) != 1:
        raise RuntimeError(f"the script template lost its anchor line {anchor!r}")
    return text.replace(anchor, anchor + added)


def scripts(plan: Plan) -> dict[str, str]:
    """The recorded script, today's with val_acc, and today's with val_acc and grad_norm."""
    recorded = (RECORDED.replace("__EPOCHS__", str(plan.epochs))
                .replace("__STEPS__", str(plan.steps)))
    val = edit(recorded, LOSS_LINE, VAL_LINE)
    return {"recorded": recorded, "val_acc": val, "grad_norm": edit(val, BACKWARD_LINE,
                                                                      GRAD_LINE)}


# ---------------------------------------------------------------------------------------------
# Subprocesses and scratch repositories.
# ---------------------------------------------------------------------------------------------


@dataclass
class Timed:
    seconds: float
    cpu_s: float  # user + system seconds of the process and the children it waited for
    rc: int
    stdout: str
    stderr: str


def timed(argv: list[str], cwd: Path) -> Timed:
    """Run `argv` in `cwd`; its wall time from spawn to exit."""
    before = cpu_of_children()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=child_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    return Timed(time.perf_counter() - t0, cpu_of_children() - before, proc.returncode,
                 proc.stdout, proc.stderr)


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def checked(argv: list[str], cwd: Path) -> Timed:
    out = timed(argv, cwd)
    if out.rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (rc={out.rc}):\n{out.stderr[-2000:]}")
    return out


def florsql_argv() -> list[str]:
    script = Path(sys.executable).parent / "florsql"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from florsql.cli import main; sys.exit(main())"]


def train(repo: Path, lr: str) -> Timed:
    """One run of the repo's current script, as a user starts it."""
    return checked([sys.executable, SCRIPT, "--flor", f"r{lr}", "--kwargs", f"lr={lr}"], repo)


def make_history(path: Path, text: str) -> dict:
    """A git repo whose committed script has recorded one run per lr."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "bench"), ("user.email", "bench@localhost"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    (path / SCRIPT).write_text(text)
    git(path, "add", SCRIPT)
    git(path, "commit", "-q", "-m", "training script")
    seconds = []
    for lr in LRS:
        log(f"recording run r{lr}")
        seconds.append(train(path, lr).seconds)
    ckpts = sorted(len(list(d.glob("ckpt/*.json"))) for d in (path / ".flor" / "runs").iterdir())
    return {"record_s": seconds, "checkpoints_per_run": ckpts}


def fresh_copy(history: Path, dest: Path, today: str) -> Path:
    """A copy of the recorded history (git and .flor, no catalog: it is rebuilt, with this
    copy's paths) with today's uncommitted script."""
    shutil.copytree(history, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("catalog.duckdb*", "catalog"))
    (dest / SCRIPT).write_text(today)
    return dest


# ---------------------------------------------------------------------------------------------
# Replay: plan, run, values.
# ---------------------------------------------------------------------------------------------


def dry_run(repo: Path, name: str, workers: int) -> dict:
    """`florsql replay NAME --dry-run`: the printed estimate (it also builds the catalog), plus
    what the plan says about memoization when the engine has that notion."""
    out = checked([*florsql_argv(), "replay", name, "--workers", str(workers), "--dry-run",
                   "--project", str(repo)], repo)
    found = re.search(r"(\d+) task\(s\) on \d+ worker\(s\)(?: \([^)]*\))?, estimated ([\d.]+) s",
                      out.stdout)
    if not found:
        raise RuntimeError(f"no estimate in the dry-run output:\n{out.stdout[-2000:]}")
    return {"estimated_s": float(found.group(2)), "tasks": int(found.group(1)),
            "cli_s": out.seconds, "memoize": memo_flags(repo, name, workers)}


def memo_flags(repo: Path, name: str, workers: int) -> list[bool | None] | str:
    """`RunPlan.memoize` per run (None where the engine has no such field)."""
    try:
        import florsql

        with florsql.connect(repo) as conn:
            plan = _api(conn).plan([name], workers)
            return [getattr(run, "memoize", None) for run in plan.runs]
    except Exception as exc:  # the engine may be mid-change: report, don't fail
        return f"unknown ({type(exc).__name__}: {exc})"


def replay(repo: Path, name: str, workers: int) -> dict:
    out = timed([*florsql_argv(), "replay", name, "--workers", str(workers),
                 "--project", str(repo)], repo)
    result = {"seconds": out.seconds, "cpu_s": out.cpu_s, "rc": out.rc,
              "loadavg": os.getloadavg()[0]}
    if out.rc != 0:
        result["error"] = (out.stderr.strip() or out.stdout.strip())[-1500:]
        log(f"replay {name} --workers {workers} exited {out.rc}: {result['error'][-300:]}")
    return result


class _api:
    """The library calls a warm replay makes: the replay service's, or (to compare with
    commits before it) the session's pool with plan_replay and run_replay."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.service = getattr(conn, "replay_service", None)

    def warm(self, workers: int):
        if self.service is not None:
            return self.service.warm(workers)
        return self.conn.session.warm_replay_pool(workers)

    def pool(self):
        return (self.service.executor.pool if self.service is not None
                else self.conn.session.replay_pool)

    def plan(self, names: list[str], workers: int):
        if self.service is not None:
            return self.service.plan_names(names, None, workers)
        from florsql.engine.replay_plan import plan_replay

        return plan_replay(self.conn.session, names, None, workers)

    def run(self, plan) -> list:
        if self.service is not None:
            return list(self.service.run(plan).results)
        from florsql.engine.replay_run import run_replay

        return run_replay(self.conn.session, plan)


def warm_replay(repo: Path, name: str, workers: int) -> dict:
    """In this process: open the project, warm its replay workers and wait (not timed), then
    time the service's plan + run through the library API."""
    import florsql

    conn = florsql.connect(repo)
    session = conn.session
    api = _api(conn)
    try:
        session.refresh()  # builds the catalog, as the cold replay's --dry-run does
        t0 = time.perf_counter()
        api.warm(workers).join()
        warm_s = time.perf_counter() - t0
        pool = api.pool()
        if pool.warm_error is not None:
            raise RuntimeError(f"the replay workers did not start: {pool.warm_error}")
        zygotes = pool.pids
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        plan = api.plan([name], workers)
        t1 = time.perf_counter()
        results = api.run(plan)
        seconds = time.perf_counter() - t0
        failed = [r.error for r in results if not r.ok]
        out = {"seconds": seconds, "plan_s": t1 - t0, "run_s": seconds - (t1 - t0),
               "rc": 1 if failed else 0, "loadavg": load, "warm_up_s": warm_s,
               "estimated_s": plan.estimated_seconds, "tasks": len(plan.tasks),
               "memoize": [r.memoize for r in plan.runs],
               "memoized": [r.memoized for r in results],
               "pooled": all(r.pooled for r in results),
               "task_s": sorted(round(r.seconds, 3) for r in results),
               "zygotes_reused": pool.pids == zygotes}
        if failed:
            out["error"] = failed[0][-1500:]
            log(f"warm replay {name} --workers {workers} failed: {failed[0][-300:]}")
        return out
    finally:
        session.close()  # stops the workers
        conn.close()


def logged_values(repo: Path, name: str) -> dict[str, dict[tuple[str, str], float]]:
    """{source: {(runid, context path): value}} of one name, and the raw row counts."""
    import florsql

    with florsql.connect(repo) as conn:
        rows = conn.execute(VALUES_SQL, [name]).fetchall()
    out: dict[str, Any] = {"counts": {}}
    for runid, path, source, value in rows:
        out.setdefault(source, {})[(runid, path)] = value
        out["counts"][source] = out["counts"].get(source, 0) + 1
    return out


def estimate_error(estimate: float, measured: float) -> float:
    return estimate / measured - 1 if measured else float("nan")


# ---------------------------------------------------------------------------------------------
# The three cases.
# ---------------------------------------------------------------------------------------------


def values_check(replayed: dict, fresh: dict, expected: int) -> dict:
    return {"count": len(replayed), "expected": expected,
            "match": bool(replayed) and replayed == fresh and len(replayed) == expected}


def bench_epoch(history: Path, scratch: Path, plan: Plan, today: str) -> dict:
    """Case 1: replay val_acc with 1 worker, cold (the CLI) and warm (the library, workers
    warmed first), vs re-running the 3 runs with today's code."""
    reps: list[dict] = []
    expected = len(LRS) * plan.epochs
    for rep in range(plan.epoch_reps):
        cold_repo = fresh_copy(history, scratch / f"epoch-{rep}-cold", today)
        warm_repo = fresh_copy(history, scratch / f"epoch-{rep}-warm", today)
        rec: dict[str, Any] = {"plan": dry_run(cold_repo, "val_acc", 1)}

        def do_cold(rec: dict = rec, rep: int = rep, repo: Path = cold_repo) -> None:
            log(f"case 1 rep {rep + 1}/{plan.epoch_reps}: cold: florsql replay val_acc "
                "--workers 1")
            rec["cold"] = replay(repo, "val_acc", 1)

        def do_warm(rec: dict = rec, rep: int = rep, repo: Path = warm_repo) -> None:
            log(f"case 1 rep {rep + 1}/{plan.epoch_reps}: warm: plan_names + run, "
                "1 warm worker")
            rec["warm"] = warm_replay(repo, "val_acc", 1)

        def do_rerun(rec: dict = rec, rep: int = rep, repo: Path = warm_repo) -> None:
            log(f"case 1 rep {rep + 1}/{plan.epoch_reps}: re-running {len(LRS)} runs")
            runs = [train(repo, lr) for lr in LRS]
            rec["rerun_s"] = [r.seconds for r in runs]
            rec["rerun_cpu_s"] = sum(r.cpu_s for r in runs)

        steps = [do_cold, do_warm, do_rerun]
        for step in steps[rep % 3:] + steps[:rep % 3]:
            step()
        cold, warm = logged_values(cold_repo, "val_acc"), logged_values(warm_repo, "val_acc")
        fresh = warm.get("forward", {})
        rec["values"] = {"cold": values_check(cold.get("replay", {}), fresh, expected),
                         "warm": values_check(warm.get("replay", {}), fresh, expected),
                         "replayed_warm": sorted([*k, v] for k, v in
                                                 warm.get("replay", {}).items()),
                         "fresh": sorted([*k, v] for k, v in fresh.items())}
        reps.append(rec)
        shutil.rmtree(cold_repo, ignore_errors=True)
        shutil.rmtree(warm_repo, ignore_errors=True)
    rerun_s = median([sum(r["rerun_s"]) for r in reps])
    out: dict[str, Any] = {"reps": reps, "rerun_sum_median_s": rerun_s,
                           "rerun_cpu_median_s": median([r["rerun_cpu_s"] for r in reps]),
                           "memoize": reps[0]["warm"]["memoize"],
                           "cli_dry_run_median_s": median([r["plan"]["cli_s"] for r in reps])}
    for kind in ("cold", "warm"):
        seconds = median([r[kind]["seconds"] for r in reps])
        estimate = median([r["plan"]["estimated_s"] if kind == "cold"
                           else r[kind]["estimated_s"] for r in reps])
        out[kind] = {"median_s": seconds, "speedup": rerun_s / seconds,
                     "paired_speedups": [sum(r["rerun_s"]) / r[kind]["seconds"] for r in reps],
                     "ok": all(r[kind]["rc"] == 0 for r in reps),
                     "values_match": all(r["values"][kind]["match"] for r in reps),
                     "estimated_s": estimate, "estimate_error": estimate_error(estimate, seconds)}
    out["cold"]["cpu_median_s"] = median([r["cold"]["cpu_s"] for r in reps])
    out["warm"]["plan_median_s"] = median([r["warm"]["plan_s"] for r in reps])
    out["warm"]["warm_up_median_s"] = median([r["warm"]["warm_up_s"] for r in reps])
    out["warm"]["memoized"] = reps[0]["warm"]["memoized"]
    return out


def bench_step(history: Path, scratch: Path, plan: Plan, today: str) -> dict:
    """Case 2: replay grad_norm with 2 warm workers vs 1, each on a fresh copy."""
    reps: list[dict] = []
    expected = len(LRS) * plan.epochs * plan.steps
    for rep in range(plan.step_reps):
        rec: dict[str, Any] = {}
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            repo = fresh_copy(history, scratch / f"step-{rep}-w{workers}", today)
            log(f"case 2 rep {rep + 1}/{plan.step_reps}: warm: grad_norm, {workers} worker(s)")
            rec[f"w{workers}"] = {"replay": warm_replay(repo, "grad_norm", workers)}
            values = logged_values(repo, "grad_norm")
            rec[f"w{workers}"]["counts"] = values["counts"]
            rec[f"w{workers}"]["_values"] = values.get("replay", {})
            shutil.rmtree(repo, ignore_errors=True)
        w1, w2 = rec["w1"].pop("_values"), rec["w2"].pop("_values")
        rec["values_match"] = bool(w1) and w1 == w2 and len(w1) == expected
        reps.append(rec)
    w1_s = median([r["w1"]["replay"]["seconds"] for r in reps])
    w2_s = median([r["w2"]["replay"]["seconds"] for r in reps])
    est1 = median([r["w1"]["replay"]["estimated_s"] for r in reps])
    est2 = median([r["w2"]["replay"]["estimated_s"] for r in reps])
    ok = all(r[w]["replay"]["rc"] == 0 for r in reps for w in ("w1", "w2"))
    return {"reps": reps, "w1_median_s": w1_s, "w2_median_s": w2_s, "speedup": w1_s / w2_s,
            "paired_speedups": [r["w1"]["replay"]["seconds"] / r["w2"]["replay"]["seconds"]
                                for r in reps],
            "replay_ok": ok, "values_match": all(r["values_match"] for r in reps),
            "expected_records": expected,
            "tasks": {"w1": reps[0]["w1"]["replay"]["tasks"],
                      "w2": reps[0]["w2"]["replay"]["tasks"]},
            "memoize": reps[0]["w1"]["replay"]["memoize"],
            "estimated_s": {"w1": est1, "w2": est2},
            "estimate_error": {"w1": estimate_error(est1, w1_s), "w2": estimate_error(est2, w2_s)}}


def bench_startup(repo: Path, plan: Plan) -> float:
    """Seconds to start a torch training process (STARTUP_CODE): each replay process pays
    at least this."""
    return median([checked([sys.executable, "-c", STARTUP_CODE], repo).seconds
                   for _ in range(plan.startup_reps)])


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def memo_text(flags: Any) -> str:
    if isinstance(flags, str):
        return flags
    if all(f is None for f in flags):
        return "no memoization in this engine"
    return f"memoized runs {sum(bool(f) for f in flags)}/{len(flags)}"


def format_table(res: dict) -> str:
    m, p, e, s = res["machine"], res["plan"], res["epoch"], res["step"]
    cold, warm = e["cold"], e["warm"]
    n = len(LRS)
    head = (f"florsql replay benchmark ({res['mode']} mode, {n} runs of {p['epochs']} epochs x "
            f"{p['steps']} steps, medians; {m['cpus']} CPUs, python {m['python']}, load average "
            f"{m['loadavg_start']:.1f} at start, {m['loadavg_end']:.1f} at end)")
    busy = [f"WARNING: load average {m['loadavg_start']:.1f} > {BUSY_LOAD} at start: other "
            "processes share the CPUs and the numbers are unreliable"] * (
        m["loadavg_start"] > BUSY_LOAD)
    floor = e["cli_dry_run_median_s"] + res["startup_s"]
    e_ok = warm["ok"] and warm["values_match"] and warm["speedup"] >= TARGET_EPOCH_SPEEDUP
    s_ok = s["replay_ok"] and s["speedup"] >= TARGET_WORKER_SPEEDUP
    est_rows = [("case 1 val_acc, cold (CLI)", cold["estimated_s"], cold["median_s"],
                 cold["estimate_error"]),
                ("case 1 val_acc, warm", warm["estimated_s"], warm["median_s"],
                 warm["estimate_error"]),
                ("case 2 grad_norm, 1 worker", s["estimated_s"]["w1"], s["w1_median_s"],
                 s["estimate_error"]["w1"]),
                ("case 2 grad_norm, 2 workers", s["estimated_s"]["w2"], s["w2_median_s"],
                 s["estimate_error"]["w2"])]
    est_ok = all(abs(err) <= TARGET_ESTIMATE for *_, err in est_rows)
    lines = [
        head, *busy, "-" * 96,
        f"recording: {n} runs, {median(res['history']['record_s']):.2f} s each (median), "
        f"checkpoints per run {res['history']['checkpoints_per_run']}",
        "",
        f"1. epoch-level val_acc, 1 worker, vs re-running {n} runs "
        f"{e['rerun_sum_median_s']:.2f} s ({memo_text(e['memoize'])}):",
        f"   warm: plan + run {warm['median_s']:.2f} s -> {warm['speedup']:.1f}x faster "
        f"(target >= {TARGET_EPOCH_SPEEDUP:.0f}x: {verdict(e_ok)}); per repetition "
        f"{', '.join(f'{x:.1f}x' for x in warm['paired_speedups'])}",
        f"         plan {warm['plan_median_s']:.2f} s; warming the worker first took "
        f"{warm['warm_up_median_s']:.2f} s (not timed); exit 0: {yes(warm['ok'])}; replayed "
        f"values == fresh re-run values: {yes(warm['values_match'])}",
        f"   cold: `florsql replay` CLI {cold['median_s']:.2f} s -> {cold['speedup']:.1f}x "
        f"faster; per repetition {', '.join(f'{x:.1f}x' for x in cold['paired_speedups'])}; "
        f"exit 0: {yes(cold['ok'])}; values: {yes(cold['values_match'])}",
        f"         floor: CLI dry-run {e['cli_dry_run_median_s']:.2f} s + one worker starting "
        f"torch {res['startup_s']:.2f} s = {floor:.2f} s; CPU seconds: cold replay "
        f"{cold['cpu_median_s']:.2f}, re-running {e['rerun_cpu_median_s']:.2f}",
        "",
        f"2. step-level grad_norm, warm: 1 worker {s['w1_median_s']:.2f} s "
        f"({s['tasks']['w1']} tasks) vs 2 workers {s['w2_median_s']:.2f} s "
        f"({s['tasks']['w2']} tasks) -> {s['speedup']:.2f}x (target >= "
        f"{TARGET_WORKER_SPEEDUP}x: {verdict(s_ok)}; {m['cpus']} CPUs)",
        f"   per repetition {', '.join(f'{x:.2f}x' for x in s['paired_speedups'])}; replay "
        f"exit 0: {yes(s['replay_ok'])}; 2-worker values == 1-worker values "
        f"({s['expected_records']} records each): {yes(s['values_match'])}",
        "",
        f"3. estimate vs measured (target within +-{TARGET_ESTIMATE:.0%}: {verdict(est_ok)})",
        *(f"   {label:<28} estimated {est:6.2f} s  measured {act:6.2f} s  {err:+.0%}  "
          f"{verdict(abs(err) <= TARGET_ESTIMATE)}" for label, est, act, err in est_rows),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    if os.getloadavg()[0] > BUSY_LOAD:
        log(f"load average {os.getloadavg()[0]:.1f}: other processes are running, "
            "the numbers will be noisy")
    BENCH_DIR.mkdir(exist_ok=True)
    texts = scripts(plan)
    scratch = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    results: dict[str, Any] = {"mode": "quick" if args.quick else "full", "plan": asdict(plan),
                               "machine": machine_info(), "lrs": list(LRS)}
    try:
        history = scratch / "history"
        results["history"] = make_history(history, texts["recorded"])
        results["startup_s"] = bench_startup(history, plan)
        results["epoch"] = bench_epoch(history, scratch, plan, texts["val_acc"])
        results["step"] = bench_step(history, scratch, plan, texts["grad_norm"])
    finally:
        end_scratch(scratch, args.keep)
    publish_results(results, started, format_table, RESULTS_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
