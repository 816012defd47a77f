"""Retroactive-SQL benchmark: analysis + planning over 1,000 runs, and the cost of the missing-
value check on a query that needs no replay, vs the same rewritten SQL run directly in DuckDB.

Run from the repository root (not part of the unit-test suite):

    .venv/bin/python tests/bench/bench_retro.py            # 1,000 runs, about 2 minutes
    .venv/bin/python tests/bench/bench_retro.py --quick    # 100 runs, under a minute

A scratch git repository holds a training script (`flor.arg` lr and hidden; 5 epochs x 20
steps; `flor.log("loss")` per step, `flor.log("acc")` per epoch; `flor.checkpointing` of a tiny
torch model, a checkpoint at every epoch). Four runs are recorded for real, two at each of two
committed code versions; each is then cloned (record files copied, run identity and `lr`
rewritten, checkpoint files hard-linked) into RUNS runs in all, spread evenly over lr in [0, 1).
Today's script (uncommitted) adds an epoch-level `flor.log("val_acc", ...)`.

Measured, each the median of REPS after one warm-up (the first, cold call is printed apart):
  1. `prepare + plan`: `session.prepare(Q)` (parse, qualify, analysis, rewrite) plus
     `ReplayService.plan_query` for Q = `SELECT runid, epoch, val_acc FROM history WHERE lr > 0.5xx`
     (about half the runs lack val_acc), with a new threshold each call so that nothing is
     cached for that SQL text; after one plan of the plain Q, which read the old versions
     and the catalog facts the process then keeps: target <= 20 ms;
  2. `no missing column`: `conn.execute(Q2).fetchall()` through the DB-API with replay="auto"
     for Q2 = `SELECT runid, epoch, step, loss, lr FROM history WHERE lr > 0.5` (`loss` is a
     name today's script logs, so the missing-value check runs and finds nothing), vs the
     rewritten SQL of Q2 run on a plain cursor of the same DuckDB database: target <= 1.10.
Results are printed as a table and written to .bench/retro_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import child_env, git, log, machine_info, median, verdict

ROOT = Path(__file__).resolve().parents[2]
RESULTS_PATH = ROOT / ".bench" / "retro_results.json"
TARGET_PLAN_MS = 20.0
TARGET_OVERHEAD = 1.10
SCRIPT = '''\
import torch, flor
from torch import nn

torch.manual_seed(0)
lr = flor.arg("lr", 0.1)
hidden = flor.arg("hidden", 8)
X = torch.randn(64, 4)
Y = X.sum(1, keepdim=True)
model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))
opt = torch.optim.SGD(model.parameters(), lr=lr)
with flor.checkpointing(model=model, optimizer=opt):
    for epoch in flor.loop("epoch", range(5)):
        for step in flor.loop("step", range(20)):
            opt.zero_grad()
            loss = ((model(X) - Y) ** 2).mean()
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())
        flor.log("acc", float(-loss.item()))
'''
TODAY = SCRIPT + "        flor.log(\"val_acc\", float(model(X).mean()))\n"
PLAN_QUERY = "SELECT runid, epoch, val_acc FROM history WHERE lr > 0.5"
READ_QUERY = "SELECT runid, epoch, step, loss, lr FROM history WHERE lr > 0.5"


def record_history(repo: Path, runs: int) -> None:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text(SCRIPT)
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "v1")
    env = child_env({"FLOR_CHECKPOINT_EVERY": "1"})
    for version in (1, 2):
        if version == 2:
            (repo / "train.py").write_text(SCRIPT.replace("nn.ReLU()", "nn.Tanh()"))
            git(repo, "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qam", "v2")
        for k in range(2):
            subprocess.run([sys.executable, "train.py", "--flor", f"seed{version}{k}"],
                           cwd=repo, env=env, check=True, capture_output=True)
    (repo / "train.py").write_text(TODAY)
    clone_runs(repo / ".flor" / "runs", runs)


def clone_runs(runs_dir: Path, total: int) -> None:
    """Clone the recorded runs into `total` runs with distinct identities and lr values."""
    seeds = sorted(runs_dir.iterdir())
    for i in range(total):
        src = seeds[i % len(seeds)]
        stamp = f"2026-01-01T00:00:00.{i:06d}"
        dst = runs_dir / f"20260101T000000.{i:06d}"
        shutil.copytree(src, dst, copy_function=os.link,
                        ignore=shutil.ignore_patterns("run.json", "parts"))
        run = json.loads((src / "run.json").read_text())
        run.update(runid=f"r{i:04d}", tstamp=stamp)
        (dst / "run.json").write_text(json.dumps(run))
        (dst / "parts").mkdir()
        for part in (src / "parts").iterdir():
            (dst / "parts" / part.name).write_bytes(_with_lr(part.read_bytes(), i / total))
    for seed in seeds:
        shutil.rmtree(seed)


def _with_lr(data: bytes, lr: float) -> bytes:
    """A record part with its `lr` arg set to `lr`: flor-part/3 (magic, u32 header length,
    JSON header, binary columns) or flor-part/2 (one JSON document)."""
    magic = b"FLORPART3\n"
    if data.startswith(magic):
        (size,) = struct.unpack_from("<I", data, len(magic))
        start = len(magic) + 4
        header = json.loads(data[start:start + size])
        header["args"] = [[k, lr if k == "lr" else v] for k, v in header.get("args", [])]
        head = json.dumps(header, separators=(",", ":")).encode()
        return magic + struct.pack("<I", len(head)) + head + data[start + size:]
    doc = json.loads(data)
    doc["args"] = [[k, lr if k == "lr" else v] for k, v in doc.get("args", [])]
    return json.dumps(doc).encode()


def timed(fn, reps: int) -> tuple[float, float]:
    """(first call, median of `reps` later calls), in milliseconds."""
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1e3
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return first, median(samples)


def _planner(conn):
    """The retroactive planner: the replay service's, or (to compare with commits before it)
    the engine's plan_retroactive."""
    if hasattr(conn, "replay_service"):
        return conn.replay_service.plan_query
    from florsql.engine.retro import plan_retroactive

    return lambda analysis: plan_retroactive(conn.session, analysis)


def measure(repo: Path, reps: int) -> dict:
    import florsql

    with florsql.connect(repo, replay="auto") as conn:
        start = time.perf_counter()
        conn.refresh()
        ingest_s = time.perf_counter() - start
        session = conn.session
        plan_query = _planner(conn)
        start = time.perf_counter()
        plan = plan_query(session.prepare(PLAN_QUERY).analysis)
        cold_ms = (time.perf_counter() - start) * 1e3
        runs = getattr(plan, "replay", plan).runs  # older engines wrapped it in a RetroPlan
        planned = {"runs": len(runs), "tasks": len(plan.tasks),
                   "refused": sum(1 for r in runs if r.refusal),
                   "estimated_s": round(plan.estimated_seconds, 1)}
        queries = iter(PLAN_QUERY.replace("0.5", f"{0.5 + k / 1000:.3f}")
                       for k in range(1, reps + 2))
        # a new query text each time: nothing cached for this SQL; what the process keeps
        # (old versions' sources and patches, catalog facts until the catalog changes) helps
        _, plan_ms = timed(
            lambda: plan_query(session.prepare(next(queries)).analysis), reps)
        rewritten = session.prepare(READ_QUERY).sql
        ours, raw = [], []
        for _ in range(reps + 1):  # alternate, so drift on a shared machine hits both
            start = time.perf_counter()
            rows = conn.execute(READ_QUERY).fetchall()
            ours.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            raw_rows = session.con.cursor().execute(rewritten).fetchall()
            raw.append((time.perf_counter() - start) * 1e3)
        assert len(rows) == len(raw_rows)
        _, prep_ms = timed(lambda: session.prepare(READ_QUERY), reps)
        _, refresh_ms = timed(conn.refresh, reps)
    return {"ingest_s": ingest_s, "plan": planned, "plan_cold_ms": cold_ms,
            "plan_ms": plan_ms, "query_ms": median(ours[1:]), "raw_ms": median(raw[1:]),
            "rows": len(rows), "prepare_ms": prep_ms, "refresh_ms": refresh_ms}


def report(result: dict, runs: int) -> None:
    ratio = result["query_ms"] / result["raw_ms"]
    lines = [
        f"history: {runs} runs, ingest {result['ingest_s']:.1f} s; plan for Q: "
        f"{result['plan']}",
        f"prepare + plan over {runs} runs   {result['plan_ms']:8.1f} ms (cold, first in the "
        f"process: {result['plan_cold_ms']:.0f} ms)  target <= {TARGET_PLAN_MS:.0f} ms  "
        f"{verdict(result['plan_ms'] <= TARGET_PLAN_MS)}",
        f"no missing column: florsql       {result['query_ms']:8.1f} ms  ({result['rows']} rows)",
        f"  same rewritten SQL, raw DuckDB {result['raw_ms']:8.1f} ms  ratio {ratio:.3f}  "
        f"target <= {TARGET_OVERHEAD:.2f}  {verdict(ratio <= TARGET_OVERHEAD)}",
        f"  of which: prepare {result['prepare_ms']:.1f} ms, ingest check "
        f"{result['refresh_ms']:.1f} ms",
    ]
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 runs, fewer repetitions")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    runs, reps = (100, 5) if args.quick else (1000, 9)
    scratch = Path(tempfile.mkdtemp(prefix="bench-retro-"))
    try:
        log(f"recording 4 runs and cloning them into {runs} in {scratch}")
        record_history(scratch / "proj", runs)
        result = measure(scratch / "proj", reps)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    report(result, runs)
    RESULTS_PATH.parent.mkdir(exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"mode": "quick" if args.quick else "full", "runs": runs,
                                        "machine": machine_info(), **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
