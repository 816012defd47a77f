"""RayExecutor: replay tasks and batch calls as Ray tasks, each version's code carried to the
node as an archive, never read there from the project's repository.

A real local Ray instance (2 CPUs; a two-raylet cluster for one test), real recorded tiny
training runs in temporary repositories (conftest's helpers), replayed through ReplayService as
with the local executors. A replayed statement sleeps for good while the project holds a file
`hang` whose condition holds (as in test_replay_faults.py); another logs the pid of the raylet
above its Ray worker, which tells the nodes apart.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import florsql
from conftest import (
    TINY_MLP_LOSS_LINE,
    git,
    make_repo,
    process_alive,
    record_then_edit,
    tiny_mlp_script,
)
from flor import gitrepo
from florsql.engine import CatalogSession, ReplayService, SubprocessExecutor
from florsql.engine.catalog.parts import read_part
from florsql.engine.replay.code_archive import ArchiveError, archive_vid, extract_tree
from florsql.engine.replay.model import INTERRUPTED, ReplayInterrupted
from florsql.engine.replay.ray_executor import RAY_MISSING, RayExecutor

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
# Ray workers cannot import this module: its functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

HELPERS = '''import os, time


def pause(epoch, lr):
    """Sleep for good while the project's `hang` file holds for this run and epoch."""
    flag = os.path.join(os.environ.get("FLOR_PROJECT_ROOT", "."), "hang")
    if os.path.exists(flag) and eval(open(flag).read(), {"epoch": epoch, "lr": lr}):
        open(f"{flag}.{os.getpid()}", "w").close()
        time.sleep(1000)
    return float(epoch)


def raylet():
    """The pid of this process's grandparent: under Ray, the raylet of the worker's node."""
    with open(f"/proc/{os.getppid()}/stat") as fh:
        return float(fh.read().rsplit(")", 1)[1].split()[1])
'''
OLD = tiny_mlp_script(3).replace("import flor\n", "import flor\n" + HELPERS)
TODAY = OLD.replace(TINY_MLP_LOSS_LINE, TINY_MLP_LOSS_LINE
                    + '            flor.log("w", pause(epoch, lr) + loss.item())\n'
                    + '            flor.log("raylet", raylet())\n')


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs a (lr 0.05) and b (lr 0.1) of OLD, checkpointed every epoch; TODAY on disk."""
    return record_then_edit(tmp_path_factory.mktemp("ray") / "proj", OLD, TODAY,
                            (("a", "0.05"), ("b", "0.1")))


@pytest.fixture
def project(recorded: Path, tmp_path: Path) -> Path:
    """A copy of the recorded project (its catalog is built afresh at the first query)."""
    return shutil.copytree(recorded, tmp_path / "proj", symlinks=True)


@pytest.fixture(scope="module")
def _ray_module() -> object:
    yield
    ray.shutdown()


@pytest.fixture
def local_ray(_ray_module: object) -> None:
    """The module's local Ray instance (2 CPUs), started once (again after the cluster test)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)


def _replay(project: Path, executor: object, names: list[str], **kwargs: object) -> object:
    session = CatalogSession(project)
    service = ReplayService(session, executor)  # type: ignore[arg-type]
    try:
        return service.replay_names(names, workers=2, **kwargs)
    finally:
        service.close()
        session.close()


def _values(project: Path, name: str) -> list[tuple]:
    """(runid, context path, value) of the replayed records of `name`."""
    with florsql.connect(project, replay="off") as conn:
        return conn.execute(
            "SELECT r.runid, c.path, l.value_num FROM logs l JOIN runs r USING (tstamp) "
            "JOIN contexts c USING (tstamp, ctx_id) WHERE l.value_name = ? "
            "AND l.source = 'replay' ORDER BY ALL", [name]).fetchall()


def _record_files(project: Path) -> list[tuple]:
    """Every record of every replay's part files, decoded: (runid dir, context, name, value)."""
    out = []
    for part in project.glob(".flor/runs/*/replays/*/parts/*.part"):
        doc = read_part(part)
        paths = {0: ""}
        for cid, parent, loop, iteration in doc["contexts"]:
            paths[cid] = f"{paths[parent]}/{loop}={iteration}".lstrip("/")
        run = part.parents[3].name  # runs/<tstamp>/replays/<task>/parts/<part>
        out += [(run, paths[c], n, v) for c, n, v in zip(doc["ctx"], doc["name"], doc["value"],
                                                         strict=True)]
    return sorted(out, key=repr)


def _wait_for(condition: Callable[[], object], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _staging(project: Path) -> list[Path]:
    return list((project / ".flor" / "replays-staging").glob("*"))


def test_a_replay_through_ray_stores_the_records_a_process_per_task_stores(
        recorded: Path, tmp_path: Path, local_ray: None) -> None:
    by_process = shutil.copytree(recorded, tmp_path / "by-process", symlinks=True)
    by_ray = shutil.copytree(recorded, tmp_path / "by-ray", symlinks=True)
    local = _replay(by_process, SubprocessExecutor(), ["w"])
    remote = _replay(by_ray, RayExecutor(), ["w"])
    assert remote.plan.executor == "ray" and len(remote.results) >= 2
    assert all(r.ok for r in local.results) and all(r.ok for r in remote.results)
    assert _values(by_ray, "w") == _values(by_process, "w")
    assert len(_values(by_ray, "w")) == 36  # 2 runs x 3 epochs x 6 steps
    assert _record_files(by_ray) == _record_files(by_process) != []
    assert ray.is_initialized()  # the caller's Ray: close() leaves it running
    assert _staging(by_ray) == []


def _hold_cpu(started: str, release: str) -> None:
    """A Ray task holding its CPU until the file `release` exists."""
    Path(started, str(os.getpid())).touch()
    while not Path(release).exists():
        time.sleep(0.05)


def test_a_ray_task_runs_without_the_project_repository(project: Path, tmp_path: Path,
                                                        local_ray: None) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    holders = [ray.remote(num_cpus=1)(_hold_cpu).remote(str(started), str(release))
               for _ in range(2)]
    _wait_for(lambda: len(list(started.iterdir())) == 2)  # no CPU left: replay tasks queue
    session = CatalogSession(project)
    service = ReplayService(session, RayExecutor())
    try:
        tasks = service.tasks(service.plan_names(["w"], workers=2))
        submission = service.executor.submit(tasks, 2, threading.Event())
        (project / ".git").rename(project / "git-away")  # after the archives, before the tasks
        release.touch()
        results = list(submission.results())
    finally:
        if (project / "git-away").exists():
            (project / "git-away").rename(project / ".git")
        service.close()
        session.close()
    ray.get(holders)
    assert len(results) == len(tasks) >= 2
    assert all(r.ok for r in results), [r.error for r in results]
    assert len(_values(project, "w")) == 36


def test_stopping_a_ray_replay_kills_its_processes_within_seconds(project: Path,
                                                                 local_ray: None) -> None:
    (project / "hang").write_text("True")  # every task sleeps at its first step
    cancel, stopping = threading.Event(), []

    def stop_once_hung() -> None:
        _wait_for(lambda: list(project.glob("hang.*")))
        stopping.append(time.monotonic())
        cancel.set()

    threading.Thread(target=stop_once_hung, daemon=True).start()
    with pytest.raises(ReplayInterrupted) as stopped:
        _replay(project, RayExecutor(), ["w"], cancel=cancel)
    took = time.monotonic() - stopping[0]
    assert took < 20, f"stopped after {took:.1f} s"
    results = stopped.value.results
    assert results and all(not r.ok and r.stopped == INTERRUPTED for r in results)
    hung = [int(p.suffix[1:]) for p in project.glob("hang.*")]
    deadline = time.monotonic() + 5
    while any(process_alive(p) for p in hung) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_alive(p) for p in hung)  # died with their Ray workers
    assert _staging(project) == []
    assert not list(project.glob(".flor/runs/*/replays/*"))


def _inspect(tree: Path, name: str) -> dict[str, object]:
    """What a task would see in its tree: files, git's answers, no borrowed objects."""
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True,
                              check=True).stdout.strip()

    return {"top": run("rev-parse", "--show-toplevel"), "tree": str(tree),
            "head": run("rev-parse", "HEAD"), "status": run("status", "--porcelain"),
            "committed": run("show", f"HEAD:{name}"), "text": (tree / name).read_text(),
            "alternates": (tree / ".git/objects/info/alternates").exists(),
            "files": sorted(p.name for p in tree.iterdir())}


def test_submit_call_returns_the_result_of_a_function_given_the_versions_tree(
        recorded: Path, tmp_path: Path, local_ray: None) -> None:
    root = shutil.copytree(recorded, tmp_path / "proj", symlinks=True)
    vid = git(root, "for-each-ref", "--format=%(objectname)", "refs/flor/snapshots/")
    vid = vid.splitlines()[0]
    executor = RayExecutor()
    first = executor.submit_call(_inspect, ("train.py",), project_root=root, vid=vid)
    assert first.wait(120)
    seen = first.result()
    (root / ".git").rename(root / "git-away")  # the archive is kept: no repository needed
    again = executor.submit_call(_inspect, ("train.py",), project_root=root, vid=vid).result()
    assert seen["top"] == seen["tree"] and seen["head"] == vid and seen["status"] == ""
    assert seen["text"] == OLD and seen["committed"] == OLD.strip()  # (git's output, stripped)
    assert seen["alternates"] is False and seen["files"] == [".git", "train.py"]
    assert again["head"] == vid and again["text"] == OLD
    assert not Path(seen["tree"]).exists()  # its temporary folder is removed


def _fail(tree: Path, why: str) -> None:
    raise ValueError(f"{why} in {tree.name}")


def test_a_call_that_raises_raises_the_same_error_here(recorded: Path, local_ray: None) -> None:
    vid = git(recorded, "for-each-ref", "--format=%(objectname)", "refs/flor/snapshots/")
    call = RayExecutor().submit_call(_fail, ("no data",), project_root=recorded,
                                     vid=vid.splitlines()[0])
    with pytest.raises(ValueError) as raised:
        call.result()
    assert str(raised.value) == "no data in tree"  # its own type and message
    assert "_fail" in raised.value.__notes__[0]  # the remote traceback, as a note


def test_tasks_on_a_two_node_cluster_all_succeed_on_both_nodes(project: Path) -> None:
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the module's instance: this test connects to a cluster of its own
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        executor = RayExecutor()
        assert executor.slots == 2
        report = _replay(project, executor, ["raylet"])
        assert len(report.results) >= 2 and all(r.ok for r in report.results)
        raylets = {value for _, _, value in _values(project, "raylet")}
        assert len(_values(project, "raylet")) == 36 and len(raylets) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_the_executor_starts_ray_at_its_first_call_and_stops_only_what_it_started(
        recorded: Path) -> None:
    vid = git(recorded, "for-each-ref", "--format=%(objectname)", "refs/flor/snapshots/")
    code = ("import os, sys\n"
            "from pathlib import Path\n"
            "from florsql.engine.replay.ray_executor import RayExecutor\n"
            "executor = RayExecutor()\n"
            "assert executor.slots >= 1 and executor.startup(1.0, []).per_segment > 1\n"
            "assert 'ray' not in sys.modules  # a plan neither imports nor starts Ray\n"
            f"call = executor.submit_call(os.listdir, (), project_root=Path({str(recorded)!r}),"
            f" vid={vid.splitlines()[0]!r})\n"
            "print(sorted(call.result()))\n"
            "import ray\n"
            "assert ray.is_initialized() and executor.slots == os.cpu_count()\n"
            "executor.close()\n"
            "print(ray.is_initialized())\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["['.git', 'train.py']", "False"]


def test_without_ray_the_executor_says_how_to_install_it_in_one_line() -> None:
    code = ("import sys, threading\n"
            "sys.modules['ray'] = None  # `import ray` fails as when it is not installed\n"
            "from florsql.engine.errors import EngineError\n"
            "from florsql.engine.replay.ray_executor import RayExecutor\n"
            "executor = RayExecutor()\n"
            "assert executor.slots >= 1 and executor.startup(1.0, []).per_segment > 1\n"
            "try:\n"
            "    executor.submit([], 1, threading.Event())\n"
            "except EngineError as e:\n"
            "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == RAY_MISSING + "\n"
    assert RAY_MISSING == "the ray executor needs Ray: pip install 'florsql[ray]'"


def _files(tree: Path) -> dict[str, tuple]:
    """Each path under `tree` but .git: (symlink target or bytes, executable)."""
    out = {}
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree).as_posix()
        if rel == ".git" or rel.startswith(".git/") or path.is_dir() and not path.is_symlink():
            continue
        body = os.readlink(path) if path.is_symlink() else path.read_bytes()
        out[rel] = (body, not path.is_symlink() and os.access(path, os.X_OK))
    return out


def test_an_archived_version_extracts_to_the_files_materialise_writes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": "print(1)\n"})
    (repo / "tools").mkdir()
    (repo / "tools/run.sh").write_text("echo\n")
    (repo / "tools/run.sh").chmod(0o755)
    (repo / "latest").symlink_to("tools/run.sh")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "exec bit and a link")
    vid = git(repo, "rev-parse", "HEAD")
    gitrepo.materialise(repo, vid, tmp_path / "materialised")
    archive = archive_vid(repo, vid)
    (repo / ".git").rename(tmp_path / "git-away")
    extract_tree(archive, vid, tmp_path / "extracted")
    extracted = tmp_path / "extracted"
    assert _files(extracted) == _files(tmp_path / "materialised")
    assert _files(extracted)["tools/run.sh"] == (b"echo\n", True)
    assert _files(extracted)["latest"] == ("tools/run.sh", False)
    assert git(extracted / "tools", "rev-parse", "--show-toplevel") == str(extracted)
    assert git(extracted, "rev-parse", "HEAD") == vid
    assert git(extracted, "status", "--porcelain") == ""
    assert not (extracted / ".git/objects/info/alternates").exists()


def _tar(*members: tuple[str, bytes | str]) -> bytes:
    """A tar archive of files (bytes) and symlinks (str: the target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.SYMTYPE, body
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


@pytest.mark.parametrize("members", [
    (("../escaped", b"x"),),
    (("/tmp/absolute-escape", b"x"),),
    (("link", "/etc"), ("link/passwd", b"x")),
    (("link", "../.."),),
])
def test_extraction_refuses_paths_that_leave_the_tree(tmp_path: Path,
                                                      members: tuple) -> None:
    archive = _tar((".git/HEAD", b"ab" * 20 + b"\n"), *members)
    with pytest.raises(ArchiveError):
        extract_tree(archive, "ab" * 20, tmp_path / "sub" / "tree")
    assert [p.name for p in tmp_path.rglob("*")] in ([], ["sub"])  # nothing, not half a tree
    assert not Path("/tmp/absolute-escape").exists()


def test_extraction_refuses_the_archive_of_another_version(tmp_path: Path) -> None:
    archive = _tar((".git/HEAD", b"ab" * 20 + b"\n"), ("train.py", b"print(1)\n"))
    with pytest.raises(ArchiveError, match="holds version abababab"):
        extract_tree(archive, "cd" * 20, tmp_path / "tree")
    assert not (tmp_path / "tree").exists()
