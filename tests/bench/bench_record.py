"""Recording-overhead benchmark: florsql's `flor` vs FlorDB 4.0.1, and checkpoint blocking.

Run from the repository root (not part of the unit-test suite):

    .venv/bin/python tests/bench/bench_record.py            # full run, a few minutes
    .venv/bin/python tests/bench/bench_record.py --quick    # smoke run, well under a minute

It measures, each workload in its own subprocess inside a scratch git repository:
  1. `flor.log` cost per call in a tight loop (median ns/call over timed batches);
  2. the training-loop slowdown of per-step `flor.loop` + `flor.log` on a 20-64-1 MLP;
  3. how long the training thread is blocked per checkpoint, against a plain synchronous
     `torch.save` + fsync of the same model and optimizer state, for a small and a large model.
FlorDB 4.0.1 runs in its own venv (.bench/flordb-venv, created on first use). Results are
printed as a table and written to .bench/record_results.json.

This file is also the worker: the parent copies it into each scratch repository and runs it
with BENCH_RECORD_WORKER set to a JSON config, so only stdlib is imported at module level.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
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
FLORDB_VENV = BENCH_DIR / "flordb-venv"
RESULTS_PATH = BENCH_DIR / "record_results.json"
FLORDB_VERSION = "4.0.1"
TORCH_VERSION = "2.13.0"  # a local CPU wheel: any other torch request downloads gigabytes
WORKER_ENV = "BENCH_RECORD_WORKER"
WORKER_NAME = "train_bench.py"
TARGET_LOG_NS = 1000.0
TARGET_OVERHEAD = 0.02
TARGET_CKPT_RATIO = 0.25
BATCH = 32
BUSY_LOAD = 1.0  # 1-minute load average above which another process competes for the CPUs


@dataclass(frozen=True)
class Plan:
    """Sizes and repetition counts of one benchmark run."""

    log_calls: int = 200_000
    log_batch: int = 1_000
    flordb_log_calls: int = 20_000  # ~60 us a call: fewer calls give the same median
    flordb_log_batch: int = 200
    loop_iters: int = 20_000
    flordb_loop_iters: int = 5_000
    log_reps: int = 3
    train_epochs: int = 5
    train_steps: int = 2_000
    train_reps: int = 7
    paired_blocks: int = 20  # in-process plain/flor block pairs of one epoch each
    paired_procs: int = 3  # processes of paired blocks: the overhead varies by ~0.4% between them
    small_saves: int = 20
    large_saves: int = 5
    large_layers: int = 3  # nn.Linear(4096, 4096) each: 3 layers = 50.3M float32 params


QUICK = Plan(
    log_calls=20_000, flordb_log_calls=2_000, loop_iters=2_000, flordb_loop_iters=500,
    log_reps=1, train_epochs=2, train_steps=300, train_reps=2, paired_blocks=3, paired_procs=1,
    small_saves=5, large_saves=2, large_layers=1,
)


# ---------------------------------------------------------------------------------------------
# Worker side: runs inside a scratch repo, under the venv of the implementation it measures.
# ---------------------------------------------------------------------------------------------


def import_impl(impl: str) -> ModuleType | None:
    """The recording library under test: florsql's `flor`, FlorDB's `flordb`, or none."""
    if impl == "florsql":
        return importlib.import_module("flor")
    if impl == "flordb":
        return importlib.import_module("flordb")
    return None


def torch_setup() -> ModuleType:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return torch


def work_logcall(flor: Any, cfg: dict) -> dict:
    """Tight loop of `flor.log("loss", float)` in a step context, timed in batches."""
    calls, batch, value = cfg["calls"], cfg["batch"], 0.5
    flor.arg("bench", "logcall")
    per_call: list[float] = []
    for _ in flor.loop("epoch", range(1)):
        for _ in flor.loop("step", range(1)):
            for _ in range(calls // batch):
                t0 = time.perf_counter_ns()
                for _ in range(batch):
                    flor.log("loss", value)
                per_call.append((time.perf_counter_ns() - t0) / batch)
    return {"log_ns": per_call, "empty_ns": empty_loop_ns(calls // batch, batch),
            "loop_ns": loop_iter_ns(flor, cfg["loop_iters"]),
            "outer_ns": outer_iter_ns(flor, cfg["loop_iters"])}


def empty_loop_ns(batches: int, batch: int) -> list[float]:
    """Cost of the bare `for` around each call, for reference."""
    out = []
    for _ in range(batches):
        t0 = time.perf_counter_ns()
        for _ in range(batch):
            pass
        out.append((time.perf_counter_ns() - t0) / batch)
    return out


def loop_iter_ns(flor: Any, iters: int) -> list[float]:
    """Per-iteration cost of an inner `flor.loop` with an empty body, one value per epoch."""
    out = []
    for _ in flor.loop("epoch2", range(5)):
        t0 = time.perf_counter_ns()
        for _ in flor.loop("step2", range(iters)):
            pass
        out.append((time.perf_counter_ns() - t0) / iters)
    return out


def mse_loss() -> Any:
    import torch

    return torch.nn.MSELoss()


def outer_iter_ns(flor: Any, iters: int) -> list[float]:
    """Per-iteration cost of an outermost `flor.loop` whose body logs once (no epoch loop)."""
    out = []
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in flor.loop("outer", range(iters)):
            flor.log("x", 0.5)
        out.append((time.perf_counter_ns() - t0) / iters)
    return out


def make_mlp(torch: Any, steps: int) -> tuple[Any, Any, Any, Any]:
    """The 20-64-1 MLP, SGD, and pre-generated synthetic data for `steps` batches."""
    nn = torch.nn
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xs = torch.randn(steps * BATCH, 20)
    ys = xs[:, :1] * 0.5 + 0.1 * torch.randn(steps * BATCH, 1)
    return model, opt, xs, ys


def train_plain(model: Any, opt: Any, xs: Any, ys: Any, epochs: int, steps: int) -> None:
    loss_fn = mse_loss()
    for _ in range(epochs):
        for i in range(steps):
            xb, yb = xs[i * BATCH:(i + 1) * BATCH], ys[i * BATCH:(i + 1) * BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            loss.item()


def train_flor(flor: Any, model: Any, opt: Any, xs: Any, ys: Any, epochs: int,
               steps: int) -> None:
    loss_fn = mse_loss()
    for _ in flor.loop("epoch", range(epochs)):
        for i in flor.loop("step", range(steps)):
            xb, yb = xs[i * BATCH:(i + 1) * BATCH], ys[i * BATCH:(i + 1) * BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            flor.log("loss", loss.item())


def work_train(flor: Any, cfg: dict) -> dict:
    """Time only the training loop; `ckpt` also registers model+optimizer for checkpoints."""
    torch = torch_setup()
    epochs, steps = cfg["epochs"], cfg["steps"]
    model, opt, xs, ys = make_mlp(torch, steps)
    train_plain(model, opt, xs, ys, 1, min(steps, 200))  # warm up allocator and kernels
    if flor is None:
        t0 = time.perf_counter()
        train_plain(model, opt, xs, ys, epochs, steps)
        return {"loop_s": time.perf_counter() - t0}
    flor.arg("lr", 0.01)  # starts the run (git snapshot, run dir) before the clock
    if cfg.get("ckpt"):
        with flor.checkpointing(model=model, optimizer=opt):
            t0 = time.perf_counter()
            train_flor(flor, model, opt, xs, ys, epochs, steps)
            return {"loop_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    train_flor(flor, model, opt, xs, ys, epochs, steps)
    return {"loop_s": time.perf_counter() - t0}


def work_paired(flor: Any, cfg: dict) -> dict:
    """Alternate plain and flor-instrumented epochs in one process; time each block.

    Process-to-process variation on a shared 2-core machine is several times the 2% target;
    adjacent blocks, alternating which goes first, see the same machine. A florsql block
    includes `flor.commit()`, so the background encoding and writing of its records is
    charged to it (plus one fsync per block) instead of overlapping the next block; the
    loop alone is timed too (a lower bound: the writer's work is then left out).
    FlorDB keeps records in memory until the process exits, so it has nothing to flush.
    """
    torch = torch_setup()
    steps, flush = cfg["steps"], cfg["impl"] == "florsql"
    model, opt, xs, ys = make_mlp(torch, steps)
    train_plain(model, opt, xs, ys, 1, min(steps, 200))
    flor.arg("lr", 0.01)
    times: dict[str, list[float]] = {"plain": [], "flor": [], "flor_loop": [], "flush": []}
    for block in range(cfg["blocks"]):
        for which in ("plain", "flor") if block % 2 == 0 else ("flor", "plain"):
            t0 = time.perf_counter()
            if which == "plain":
                train_plain(model, opt, xs, ys, 1, steps)
                times["plain"].append(time.perf_counter() - t0)
                continue
            train_flor(flor, model, opt, xs, ys, 1, steps)
            t1 = time.perf_counter()
            if flush:
                flor.commit()
            t2 = time.perf_counter()
            times["flor"].append(t2 - t0)
            times["flor_loop"].append(t1 - t0)
            times["flush"].append(t2 - t1)
    return times


def make_ckpt_model(torch: Any, size: str, layers: int) -> tuple[Any, Callable[[], None]]:
    """A model with populated Adam state, and a function doing one training step."""
    nn = torch.nn
    if size == "small":
        model, width = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1)), 20
        out_width = 1
    else:
        model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(layers)])
        width = out_width = 4096
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    xb, yb = torch.randn(8, width), torch.randn(8, out_width)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()

    step()
    return (model, opt), step


def torch_save_fsync(torch: Any, state: dict, path: Path) -> float:
    """A plain synchronous save of `state`, made durable; returns seconds."""
    t0 = time.perf_counter()
    with open(path, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def work_ckpt(flor: Any, cfg: dict) -> dict:
    """Checkpoint every epoch; after each, wait until durable, then time plain torch.saves.

    Waiting (flor.commit) keeps the writer idle at the next boundary, so each checkpoint
    measures the staging cost the training thread pays when the writer keeps up. The plain
    save is timed twice per epoch, alternating order: overwriting one path (`last.pt`), and
    to a new file per epoch as flor does (new files are much slower on some disks).
    """
    torch = torch_setup()
    (model, opt), step = make_ckpt_model(torch, cfg["size"], cfg["layers"])
    base_dir = Path(cfg["baseline_dir"])
    base_dir.mkdir(parents=True, exist_ok=True)
    flor.arg("size", cfg["size"])
    out: dict[str, list[float]] = {"gap_s": [], "overwrite_s": [], "new_file_s": []}
    with flor.checkpointing(model=model, optimizer=opt):
        t_end = None
        for epoch in flor.loop("epoch", range(cfg["saves"])):
            if t_end is not None:
                out["gap_s"].append(time.perf_counter() - t_end)
            step()
            flor.commit()
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            targets = [("overwrite_s", "last.pt"), ("new_file_s", f"epoch-{epoch}.pt")]
            for key, name in targets if epoch % 2 == 0 else targets[::-1]:
                out[key].append(torch_save_fsync(torch, state, base_dir / name))
            t_end = time.perf_counter()
    size = (base_dir / "last.pt").stat().st_size
    shutil.rmtree(base_dir)
    params = sum(p.numel() for p in model.parameters())
    return {**out, "state_bytes": size, "params": params}


WORKLOADS: dict[str, Callable[[Any, dict], dict]] = {
    "logcall": work_logcall,
    "train": work_train,
    "paired": work_paired,
    "ckpt": work_ckpt,
}


def worker_main(cfg: dict) -> None:
    flor = import_impl(cfg["impl"])
    result = WORKLOADS[cfg["workload"]](flor, cfg)
    Path(cfg["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent side: venvs, scratch repos, subprocesses, statistics, the table.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """Where each implementation runs."""

    main_py: Path
    flordb_py: Path | None
    florsql_repo: Path
    flordb_repo: Path
    scratch: Path


def venv_has(py: Path, code: str) -> bool:
    if not py.exists():
        return False
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=BENCH_DIR)
    return proc.returncode == 0


def ensure_flordb_venv() -> Path | None:
    """FlorDB 4.0.1 (with torch 2.13.0) in .bench/flordb-venv; created if missing."""
    py = FLORDB_VENV / "bin" / "python"
    check = ("import importlib.metadata as m, sys; "
             f"sys.exit(not (m.version('flordb') == '{FLORDB_VERSION}' and "
             f"m.version('torch').startswith('{TORCH_VERSION}')))")
    BENCH_DIR.mkdir(exist_ok=True)
    if venv_has(py, check):
        return py
    log(f"creating {FLORDB_VENV} with flordb=={FLORDB_VERSION} torch=={TORCH_VERSION} ...")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FLORDB_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", f"flordb=={FLORDB_VERSION}",
           f"torch=={TORCH_VERSION}"]
    proc = subprocess.run(pip, capture_output=True, text=True)
    if proc.returncode != 0 or not venv_has(py, check):
        log(f"FlorDB venv unusable, skipping FlorDB: {proc.stderr.strip()[-800:]}")
        return None
    return py


def make_repo(path: Path) -> Path:
    """A scratch git repo holding a copy of this file as the training script."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "bench"), ("user.email", "bench@localhost"),
                       ("commit.gpgsign", "false")):
        git(path, "config", key, value)
    shutil.copy(Path(__file__), path / WORKER_NAME)
    shutil.copy(Path(__file__).with_name("benchlib.py"), path / "benchlib.py")
    git(path, "add", WORKER_NAME)
    git(path, "commit", "-q", "-m", "benchmark script")
    return path


_RUNS = [0]


def run_worker(py: Path, repo: Path, cfg: dict, extra_env: dict[str, str] | None = None) -> dict:
    """Run one workload as `python train_bench.py` in `repo`; stdout goes to /dev/null."""
    _RUNS[0] += 1
    out = repo.parent / f"result-{_RUNS[0]}.json"
    err = repo.parent / f"stderr-{_RUNS[0]}.txt"
    env = child_env({WORKER_ENV: json.dumps({**cfg, "out": str(out)}), **(extra_env or {})})
    with open(err, "wb") as err_fh:
        proc = subprocess.run([str(py), WORKER_NAME], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=err_fh, timeout=600)
    if proc.returncode != 0 or not out.exists():
        tail = err.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"worker {cfg} failed (rc={proc.returncode}):\n{tail}")
    return json.loads(out.read_text())


def bench_logcall(env: Env, plan: Plan) -> dict:
    """flor.log ns/call and flor.loop ns/iteration, per implementation."""
    impls = [("florsql", env.main_py, env.florsql_repo, plan.log_calls, plan.log_batch,
              plan.loop_iters)]
    if env.flordb_py:
        impls.append(("flordb", env.flordb_py, env.flordb_repo, plan.flordb_log_calls,
                      plan.flordb_log_batch, plan.flordb_loop_iters))
    out: dict[str, Any] = {}
    for impl, py, repo, calls, batch, loop_iters in impls:
        reps = []
        for rep in range(plan.log_reps):
            log(f"flor.log microbenchmark: {impl} rep {rep + 1}/{plan.log_reps}")
            cfg = {"workload": "logcall", "impl": impl, "calls": calls, "batch": batch,
                   "loop_iters": loop_iters}
            reps.append(run_worker(py, repo, cfg))
        out[impl] = {
            "calls": calls, "batch": batch,
            "log_ns_median": median([median(r["log_ns"]) for r in reps]),
            "log_ns_mean": statistics.fmean(x for r in reps for x in r["log_ns"]),
            "empty_for_ns_median": median([median(r["empty_ns"]) for r in reps]),
            "loop_iter_ns_median": median([median(r["loop_ns"]) for r in reps]),
            "outer_iter_ns_median": median([median(r["outer_ns"]) for r in reps]),
            "per_rep_log_ns_median": [median(r["log_ns"]) for r in reps],
        }
    return out


def train_variants(env: Env) -> list[tuple[str, Path, Path, dict]]:
    """(label, python, repo, config) of each training variant."""
    variants = [
        ("plain", env.main_py, env.florsql_repo, {"impl": "none"}),
        ("florsql", env.main_py, env.florsql_repo, {"impl": "florsql"}),
        ("florsql+ckpt", env.main_py, env.florsql_repo, {"impl": "florsql", "ckpt": True}),
    ]
    if env.flordb_py:
        variants += [
            ("plain@flordb-venv", env.flordb_py, env.flordb_repo, {"impl": "none"}),
            ("flordb", env.flordb_py, env.flordb_repo, {"impl": "flordb"}),
        ]
    return variants


def bench_train(env: Env, plan: Plan) -> dict:
    """Training-loop seconds per variant, interleaved and rotated across repetitions."""
    variants = train_variants(env)
    times: dict[str, list[float]] = {label: [] for label, *_ in variants}
    for rep in range(plan.train_reps):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for label, py, repo, extra in order:
            log(f"training overhead: {label} rep {rep + 1}/{plan.train_reps}")
            cfg = {"workload": "train", "epochs": plan.train_epochs,
                   "steps": plan.train_steps, **extra}
            times[label].append(run_worker(py, repo, cfg)["loop_s"])
    out: dict[str, Any] = {"epochs": plan.train_epochs, "steps": plan.train_steps,
                           "batch": BATCH, "seconds": times,
                           "median_s": {k: median(v) for k, v in times.items()}}
    pairs = [("florsql", "plain"), ("florsql+ckpt", "plain"), ("flordb", "plain@flordb-venv")]
    out["overhead"] = {
        label: paired_overhead(times[label], times[base])
        for label, base in pairs if label in times
    }
    return out


def paired_overhead(variant: list[float], base: list[float]) -> dict:
    """Median of per-repetition ratios (cancels drift), and the ratio of medians."""
    ratios = [v / b - 1 for v, b in zip(variant, base, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"paired_median": median(ratios), "of_medians": median(variant) / median(base) - 1,
            "iqr": [quartiles[0], quartiles[2]], "per_rep": ratios}


def bench_paired(env: Env, plan: Plan) -> dict:
    """Per-step logging overhead from in-process alternating plain/flor epochs."""
    impls = [("florsql", env.main_py, env.florsql_repo)]
    if env.flordb_py:
        impls.append(("flordb", env.flordb_py, env.flordb_repo))
    out: dict[str, Any] = {"steps_per_block": plan.train_steps, "blocks": plan.paired_blocks,
                           "procs": plan.paired_procs}
    for impl, py, repo in impls:
        res: dict[str, list[float]] = {}
        per_proc = []
        for proc in range(plan.paired_procs):
            log(f"in-process paired training overhead: {impl}, {plan.paired_blocks} block "
                f"pairs, process {proc + 1}/{plan.paired_procs}")
            cfg = {"workload": "paired", "impl": impl, "steps": plan.train_steps,
                   "blocks": plan.paired_blocks}
            one = run_worker(py, repo, cfg)
            per_proc.append(paired_overhead(one["flor"], one["plain"])["paired_median"])
            for key, values in one.items():
                res.setdefault(key, []).extend(values)
        out[impl] = {**res, **paired_overhead(res["flor"], res["plain"]),
                     "loop_only": paired_overhead(res["flor_loop"], res["plain"]),
                     "flush_median_s": median(res["flush"]), "per_process": per_proc}
    return out


def newest_run(repo: Path, before: set[Path]) -> Path:
    runs = set((repo / ".flor" / "runs").iterdir()) - before
    if len(runs) != 1:
        raise RuntimeError(f"expected one new flor run in {repo}, found {sorted(runs)}")
    return runs.pop()


def bench_ckpt(env: Env, plan: Plan) -> dict:
    """Blocked seconds per flor checkpoint vs torch.save+fsync, per model size."""
    out: dict[str, Any] = {}
    for size, saves in (("small", plan.small_saves), ("large", plan.large_saves)):
        log(f"checkpoint cost: {size} model, {saves} epochs")
        runs_dir = env.florsql_repo / ".flor" / "runs"
        before = set(runs_dir.iterdir()) if runs_dir.exists() else set()
        cfg = {"workload": "ckpt", "impl": "florsql", "size": size, "saves": saves,
               "layers": plan.large_layers, "baseline_dir": str(env.scratch / "baseline")}
        res = run_worker(env.main_py, env.florsql_repo, cfg, {"FLOR_CHECKPOINT_EVERY": "1"})
        run = newest_run(env.florsql_repo, before)
        entries = sorted((json.loads(p.read_text()) for p in (run / "ckpt").glob("*.json")),
                         key=lambda e: e["iteration"])
        shutil.rmtree(run / "ckpt", ignore_errors=True)  # large checkpoints: free the disk
        blocked = [e["blocked_seconds"] for e in entries]
        overwrite, new_file = median(res["overwrite_s"]), median(res["new_file_s"])
        out[size] = {
            "params": res["params"], "state_bytes": res["state_bytes"],
            "checkpoints": len(entries), "blocked_s": blocked,
            "blocked_median_s": median(blocked), "blocked_first_s": blocked[0],
            "gap_median_s": median(res["gap_s"]),
            "writer_median_s": median([e["seconds"] for e in entries]),
            "torch_save_overwrite_s": res["overwrite_s"],
            "torch_save_new_file_s": res["new_file_s"],
            "torch_save_overwrite_median_s": overwrite, "torch_save_new_file_median_s": new_file,
            "ratio": median(blocked) / min(overwrite, new_file),
            "first_ratio": blocked[0] / min(overwrite, new_file),
        }
    return out


def compare(label: str, key: str, fs: dict, fd: dict | None) -> str:
    """`label: florsql N | FlorDB 4.0.1 M` for one ns metric of the logcall workload."""
    line = f"{label}: florsql {fs[key]:.0f}"
    return line + (f" | FlorDB {FLORDB_VERSION} {fd[key]:.0f}" if fd else "")


def log_lines(lc: dict) -> list[str]:
    fs, fd = lc["florsql"], lc.get("flordb")
    line = f"flor.log ns/call: florsql {fs['log_ns_median']:.0f}"
    if fd:
        speed = fd["log_ns_median"] / fs["log_ns_median"]
        line += f" | FlorDB {FLORDB_VERSION} {fd['log_ns_median']:.0f} | ratio {speed:.0f}x faster"
    ok = fs["log_ns_median"] <= TARGET_LOG_NS
    return [
        f"{line}   (target <= {TARGET_LOG_NS:.0f} ns: {verdict(ok)})",
        f"  bare `for` {fs['empty_for_ns_median']:.0f} ns/iter; florsql mean "
        f"{fs['log_ns_mean']:.0f} ns/call (includes writer-thread pauses)",
        compare("inner flor.loop ns/iteration (empty body)", "loop_iter_ns_median", fs, fd),
        compare("outermost flor.loop + one flor.log ns/iteration", "outer_iter_ns_median",
                fs, fd),
    ]


def train_lines(pa: dict, tr: dict) -> list[str]:
    fs = pa["florsql"]
    full, loop_only = fs["paired_median"], fs["loop_only"]["paired_median"]
    line = (f"per-step logging overhead: florsql {full:+.1%} incl. flushing records "
            f"(target <=2%: {verdict(full <= TARGET_OVERHEAD)}), {loop_only:+.1%} training "
            f"thread only ({verdict(loop_only <= TARGET_OVERHEAD)})")
    if "flordb" in pa:
        line += f" | FlorDB {FLORDB_VERSION} {pa['flordb']['paired_median']:+.1%}"
    ov = tr["overhead"]
    sub = f"florsql {ov['florsql']['paired_median']:+.1%}"
    if "flordb" in ov:
        sub += f" | FlorDB {FLORDB_VERSION} {ov['flordb']['paired_median']:+.1%}"
    secs = " | ".join(f"{k} {v:.3f}" for k, v in tr["median_s"].items())
    plain_s = tr["seconds"]["plain"]
    return [
        line,
        f"  ({pa['procs']} processes x {pa['blocks']} alternating plain/instrumented epoch "
        f"pairs of {pa['steps_per_block']} steps, median of all pairs; per process "
        f"{', '.join(f'{x:+.1%}' for x in fs['per_process'])}; flor.commit() after each "
        f"florsql epoch: {fs['flush_median_s'] * 1e3:.1f} ms median; pair-ratio IQR "
        f"{fs['iqr'][0]:+.1%}..{fs['iqr'][1]:+.1%})",
        f"  one subprocess per variant ({len(plain_s)} reps, {tr['epochs']}x{tr['steps']} steps):"
        f" {sub} | florsql+checkpointing {ov['florsql+ckpt']['paired_median']:+.1%}",
        f"  subprocess loop seconds (median): {secs}; plain spread "
        f"{min(plain_s):.2f}-{max(plain_s):.2f} s",
    ]


def ckpt_lines(ck: dict) -> list[str]:
    ratios = ", ".join(f"{size} {c['ratio']:.3f}" for size, c in ck.items())
    ok = all(c["ratio"] <= TARGET_CKPT_RATIO for c in ck.values())
    lines = [f"checkpoint blocked/torch.save: {ratios} (target <=0.25: {verdict(ok)})",
             "  (median blocked per checkpoint / the faster median plain save + fsync)"]
    for size, c in ck.items():
        lines += [
            f"  {size}: {c['params']:,} params, {c['state_bytes'] / 2**20:.2f} MiB state, "
            f"{c['checkpoints']} ckpts: blocked {c['blocked_median_s'] * 1e3:.2f} ms, loop gap "
            f"{c['gap_median_s'] * 1e3:.2f} ms, first {c['blocked_first_s'] * 1e3:.2f} ms "
            f"(ratio {c['first_ratio']:.2f}), background write {c['writer_median_s'] * 1e3:.1f} ms",
            f"    torch.save+fsync: overwrite {c['torch_save_overwrite_median_s'] * 1e3:.2f} ms,"
            f" new file {c['torch_save_new_file_median_s'] * 1e3:.2f} ms",
        ]
    return lines


def format_table(results: dict) -> str:
    m = results["machine"]
    head = (f"florsql recording benchmark ({results['mode']} mode, medians, {m['cpus']} CPUs, "
            f"python {m['python']}, load average {m['loadavg_start']:.1f} at start, "
            f"{m['loadavg_end']:.1f} at end)")
    busy = [f"WARNING: load average {m['loadavg_start']:.1f} > {BUSY_LOAD} at start: other "
            "processes share the CPUs and the numbers are unreliable"] * (
        m["loadavg_start"] > BUSY_LOAD)
    return "\n".join([head, *busy, "-" * 92, *log_lines(results["logcall"]),
                      *train_lines(results["paired"], results["train"]),
                      *ckpt_lines(results["ckpt"])])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one or two reps")
    parser.add_argument("--no-flordb", action="store_true", help="skip the FlorDB comparison")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--train-reps", type=int, metavar="N",
                        help="subprocess training repetitions (default 7; the per-rep spread "
                             "is about 2%%, so more reps narrow the median)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.train_reps:
        plan = replace(plan, train_reps=args.train_reps)
    started = time.perf_counter()
    if os.getloadavg()[0] > BUSY_LOAD:
        log(f"load average {os.getloadavg()[0]:.1f}: other processes are running, "
            "the numbers will be noisy")
    flordb_py = None if args.no_flordb else ensure_flordb_venv()
    scratch = Path(tempfile.mkdtemp(prefix="bench-record-"))
    try:
        env = Env(Path(sys.executable), flordb_py, make_repo(scratch / "florsql"),
                  make_repo(scratch / "flordb"), scratch)
        results: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                                   "plan": asdict(plan), "machine": machine_info()}
        results["logcall"] = bench_logcall(env, plan)
        results["paired"] = bench_paired(env, plan)
        results["train"] = bench_train(env, plan)
        results["ckpt"] = bench_ckpt(env, plan)
    finally:
        end_scratch(scratch, args.keep)
    publish_results(results, started, format_table, RESULTS_PATH)
    return 0


if __name__ == "__main__":
    if WORKER_ENV in os.environ:
        worker_main(json.loads(os.environ[WORKER_ENV]))
    else:
        sys.exit(main())
