"""Warm replay workers: zygotes that fork a child per task, reused across replays."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

import flor
import florsql
from conftest import TINY_MLP_LOSS_LINE, make_repo, process_alive, run_script, tiny_mlp_script
from florsql.engine import CatalogSession, ReplayService, SubprocessExecutor
from florsql.engine.replay.pool import ReplayPool, Task, pool_supported
from florsql.engine.replay.preload import preload_modules, script_imports

pytestmark = pytest.mark.skipif(not pool_supported(), reason="no os.fork on this platform")

PROBE = """
import json, os, sys
report = {"flor_loaded": "flor" in sys.modules, "argv": sys.argv, "cwd": os.getcwd(),
          "path0": sys.path[0], "env": os.environ.get("PROBE"), "pid": os.getpid()}
import helper  # a module beside the script: found through sys.path[0]
report["helper"] = helper.VALUE
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
print(json.dumps(report))
if mode == "fail":
    def deep():
        raise ValueError("boom in the task")
    deep()
if mode == "exit3":
    sys.exit(3)
if mode == "_exit3":
    os._exit(3)
if mode == "sleep":
    import time
    time.sleep(600)
"""


def _task(folder: Path, *args: str) -> Task:
    return Task(cwd=str(folder), argv=["probe.py", *args], env={**os.environ, "PROBE": "yes"},
                stdout=str(folder / "out.txt"), stderr=str(folder / "err.txt"), threads=1)


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    return tmp_path


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] == "Z":
                found.append(int(entry))
    return found


def test_a_child_runs_the_script_as_a_fresh_process_would(probe: Path) -> None:
    import json

    with ReplayPool() as pool:
        with pool.lease(1) as z:
            assert z.run(_task(probe, "ok")) == 0
            zygote = z.pid
        report = json.loads((probe / "out.txt").read_text())
    assert report["flor_loaded"] is False  # the zygote never imports flor
    assert report["argv"][1:] == ["ok"] and Path(report["argv"][0]) == probe / "probe.py"
    assert Path(report["cwd"]) == probe and Path(report["path0"]) == probe
    assert report["env"] == "yes" and report["helper"] == 42
    assert report["pid"] != zygote


def test_a_failing_task_reports_its_traceback_and_exit_codes_are_kept(probe: Path) -> None:
    with ReplayPool() as pool:
        with pool.lease(1) as z:
            assert z.run(_task(probe, "fail")) == 1
            err = (probe / "err.txt").read_text()
            assert "ValueError: boom in the task" in err and "in deep" in err
            assert z.run(_task(probe, "exit3")) == 3  # sys.exit(3)
            assert z.run(_task(probe, "_exit3")) == 3  # os._exit(3), as flor's memo check does
            assert z.run(_task(probe, "ok")) == 0  # the zygote survived all of them
            assert z.tasks == 4


def test_close_kills_a_running_child_and_leaves_no_zombie(probe: Path) -> None:
    import json

    pool = ReplayPool()
    pool.warm(1)
    zygote = pool.pids[0]
    outcome: list[object] = []

    def run() -> None:
        try:
            with pool.lease(1) as z:
                outcome.append(z.run(_task(probe, "sleep")))
        except Exception as e:  # the zygote went away under the task
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not (probe / "out.txt").exists() or not (probe / "out.txt").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = json.loads((probe / "out.txt").read_text())["pid"]
    assert process_alive(child)
    pool.close()
    thread.join(30)
    assert not thread.is_alive() and outcome and not isinstance(outcome[0], int)
    deadline = time.monotonic() + 10
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child) and not process_alive(zygote)
    assert _zombie_children() == []
    assert pool.pids == []


def test_closing_the_pool_does_not_wait_for_workers_still_importing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `florsql replay` warms workers while it plans; a plan with nothing to run closes the
    # pool at once, and used to wait a second per worker for imports that never finish
    (tmp_path / "slow_import_probe.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    pool = ReplayPool()
    warming = pool.warm_async(2, ["slow_import_probe"])
    deadline = time.monotonic() + 30
    while len(pool.pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    pids = pool.pids
    assert len(pids) == 2
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 1.5  # was 2 s: 1 s per worker, then a kill
    warming.join(10)
    assert not warming.is_alive() and isinstance(pool.warm_error, Exception)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_are_reused_and_started_only_up_to_the_limit(probe: Path) -> None:
    with ReplayPool() as pool:
        pool.warm(2)
        first = sorted(pool.pids)
        assert len(first) == 2 and pool.is_warm(2) and not pool.is_warm(3)
        results = []

        def run() -> None:
            with pool.lease(2) as z:
                results.append((z.pid, z.run(_task(probe, "ok"))))

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [rc for _, rc in results] == [0] * 4
        assert {pid for pid, _ in results} <= set(first) and sorted(pool.pids) == first
    assert _zombie_children() == []


def test_a_dead_zygote_is_replaced(probe: Path) -> None:
    import signal

    with ReplayPool() as pool:
        pool.warm(1)
        old = pool.pids[0]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_alive(old) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pool.lease(1) as z:
            assert z.pid != old and z.run(_task(probe, "ok")) == 0
    assert _zombie_children() == []


def test_the_modules_to_import_ahead_are_the_scripts_third_party_imports() -> None:
    source = ("import os, json\nimport torch\nfrom torch import nn\nimport numpy as np\n"
              "import flor\nimport mymodel\nfrom . import sibling\n"
              "try:\n    import pandas\nexcept ImportError:\n    pandas = None\n"
              "def f():\n    import sklearn\n")
    assert script_imports(source) == ["os", "json", "torch", "numpy", "flor", "mymodel",
                                      "pandas"]
    assert preload_modules(source, {"mymodel", "data"}) == ["torch", "torch._dynamo", "numpy",
                                                            "pandas"]
    assert preload_modules("this is not python", set()) == []


# ---------------------------------------------------------------------------------------------
# Through the session and run_replay, with real recorded runs.
# ---------------------------------------------------------------------------------------------

SCRIPT = tiny_mlp_script(epochs=3)
TODAY = SCRIPT.replace(
    TINY_MLP_LOSS_LINE,
    TINY_MLP_LOSS_LINE +
    "            flor.log(\"w\", model[0].weight.sum().item())\n"
    "        flor.log(\"val_acc\", accuracy(model, VX, VY))\n")


def _values(repo: Path, name: str, source: str) -> list[tuple]:
    with florsql.connect(repo) as conn:
        return conn.execute(
            "SELECT r.runid, c.path, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "JOIN contexts c USING (tstamp, ctx_id) WHERE l.value_name = ? AND l.source = ? "
            "ORDER BY ALL", [name, source]).fetchall()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("pool") / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a", "--kwargs", "lr=0.05",
               env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(TODAY)
    return repo


def test_two_replays_in_one_session_reuse_the_warm_worker(recorded: Path) -> None:
    session = CatalogSession(recorded)
    service = ReplayService(session)
    try:
        service.warm(1).join()
        pool = service.executor.pool
        assert pool.warm_error is None and len(pool.pids) == 1
        zygote = pool.pids[0]
        warm_plan = service.plan_names(["val_acc"], None, 1)
        assert warm_plan.startup.pooled and warm_plan.startup.warm_workers == 1
        assert warm_plan.runs[0].memoize and "torch" in warm_plan.modules
        first = service.run(warm_plan).results
        second = service.run(service.plan_names(["w"], None, 1)).results
        assert [(r.ok, r.pooled, r.memoized) for r in first] == [(True, True, True)]
        assert [(r.ok, r.pooled) for r in second] == [(True, True)]
        assert pool.pids == [zygote]  # the same zygote served both replays
        assert pool._zygotes[0].tasks == 2
    finally:
        service.close()
        session.close()
    assert pool.closed and not process_alive(zygote) and _zombie_children() == []
    run_script(recorded, "train.py", "--flor", "a", "--kwargs", "lr=0.05")
    for name, count in (("val_acc", 3), ("w", 18)):
        replayed = _values(recorded, name, "replay")
        assert len(replayed) == count and replayed == _values(recorded, name, "forward")


def test_a_cold_plan_counts_the_workers_start(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a", env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(TODAY)
    session = CatalogSession(repo)
    service = ReplayService(session)
    try:
        cold = service.plan_names(["w"], None, 1)
        assert cold.startup.pooled and cold.startup.warm_workers == 0
        service.warm(1).join()
        warm = service.plan_names(["w"], None, 1)
        assert warm.startup.warm_workers == 1
        assert cold.estimated_seconds - warm.estimated_seconds == pytest.approx(
            cold.startup.per_worker)
    finally:
        service.close()
        session.close()


def test_without_the_pool_each_task_is_a_new_interpreter(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a", env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(TODAY)
    monkeypatch.setenv("FLOR_REPLAY_POOL", "0")
    result = flor.replay("w", path=repo)
    assert result.status.tolist() == ["replayed"]
    session = CatalogSession(repo)
    service = ReplayService(session)
    try:
        plan = service.plan_names(["val_acc"], None, 1)
        assert not plan.startup.pooled and plan.executor == SubprocessExecutor.name
        assert isinstance(service.executor, SubprocessExecutor)  # no pool to start
        service.warm(1).join()
    finally:
        service.close()
        session.close()
    run_script(repo, "train.py", "--flor", "a")
    assert len(_values(repo, "w", "replay")) == 18
    assert _values(repo, "w", "replay") == _values(repo, "w", "forward")


def test_a_failing_task_in_a_worker_reports_the_tail_of_its_traceback(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a", env={"FLOR_CHECKPOINT_EVERY": "1"})
    (repo / "train.py").write_text(TODAY.replace(
        "        flor.log(\"val_acc\", accuracy(model, VX, VY))\n",
        "        flor.log(\"val_acc\", accuracy(model, VX, VY))\n"
        "        flor.log(\"ratio\", 1 / (epoch - 1))\n"))
    session = CatalogSession(repo)
    service = ReplayService(session)
    try:
        results = service.run(service.plan_names(["ratio"], None, 1)).results
        assert [(r.ok, r.pooled) for r in results] == [(False, True)]
        assert "ZeroDivisionError" in results[0].error and "exited 1" in results[0].error
        assert not list((repo / ".flor" / "replays-staging").glob("*"))
        assert service.executor.pool.pids  # the worker survived its child's failure
    finally:
        service.close()
        session.close()
    assert _values(repo, "ratio", "replay") == []


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_memo_unsafe_exit_falls_back_to_a_full_replay_in_the_worker(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": SCRIPT})
    run_script(repo, "train.py", "--flor", "a", env={"FLOR_CHECKPOINT_EVERY": "1"})
    noisy = SCRIPT.replace(
        "            flor.log(\"loss\", loss.item())\n",
        "            flor.log(\"loss\", loss.item())\n"
        "        flor.log(\"val_acc\", accuracy(model, VX, VY) + 0 * torch.rand(1).item())\n")
    (repo / "train.py").write_text(noisy)
    session = CatalogSession(repo)
    service = ReplayService(session)
    try:
        plan = service.plan_names(["val_acc"], None, 1)
        assert plan.runs[0].memoize  # the static check passes; the run-time check fails
        results = service.run(plan).results
        assert [(r.ok, r.pooled, r.memoized) for r in results] == [(True, True, False)]
    finally:
        service.close()
        session.close()
    (repo / "train.py").write_text(TODAY)
    run_script(repo, "train.py", "--flor", "witness")
    assert _values(repo, "val_acc", "replay") == [
        ("a", path, v) for _, path, v in _values(repo, "val_acc", "forward")]
