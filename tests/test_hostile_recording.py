"""Recording never dies and never leaves litter: unencodable values, a full or read-only disk,
temporary files of killed runs, bad --kwargs, a script that git ignores (issue 11, 7-8, 13).

Real training subprocesses in tmp git repositories; a full disk is a 20 MB tmpfs and a
read-only project a read-only bind mount (both need root: skipped otherwise, except read-only,
which falls back to chmod for other users).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import florsql
from conftest import git, make_repo, run_script
from flor.housekeeping import STALE_SECONDS, clean_stale_temp_files
from florsql.cli import main

WRITES_AND_WAITS = """
import sys, time
import flor
for epoch in flor.loop("epoch", range(3)):
    flor.log("a", epoch)
    flor.log("huge", 10 ** 5000 if epoch == 1 else epoch)
    flor.log("b", float(epoch))
    time.sleep(0.3)
print("ready", flush=True)
time.sleep(60)
"""

FILLS_THE_DISK = """
import os, sys, time
import flor
home, free_at = os.environ["FLOR_HOME"], int(sys.argv[1])

class Blob:
    def __init__(self): self.data = os.urandom(3 << 20)
    def state_dict(self): return {"data": self.data}
    def load_state_dict(self, state): self.data = state["data"]

def fill():
    with open(os.path.join(home, "ballast"), "wb") as fh:
        try:
            while True:
                fh.write(bytes(1 << 20)); fh.flush()
        except OSError:
            pass

with flor.checkpointing(blob=Blob()):
    for epoch in flor.loop("epoch", range(8)):
        if epoch == 2:
            fill()
        if epoch == free_at:
            os.unlink(os.path.join(home, "ballast"))
        for step in flor.loop("step", range(100)):
            flor.log("loss", epoch * 1000 + step)
        time.sleep(0.3)
print("trained")
"""


def _start(repo: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FLOR_FLUSH_SECONDS": "0.2"}
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count(repo: Path, name: str) -> int:
    with florsql.connect(repo) as conn:
        return conn.execute("SELECT count(*) FROM logs WHERE value_name = ?", [name]).fetchone()[0]


def _temp_files(home: Path) -> list[Path]:
    return [p for p in home.rglob(".*.tmp")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs, to be filled by the script."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if _sh("mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)):
        pytest.skip("filling a disk needs a 20 MB tmpfs, and mounting one needs root")
    yield mnt
    _sh("umount", "-l", str(mnt))


def _sh(*argv: str) -> int:
    return subprocess.run(argv, capture_output=True).returncode


# --- a value the encoder cannot take ---------------------------------------------------------


def test_an_unencodable_value_is_dropped_with_one_warning_and_recording_goes_on(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": WRITES_AND_WAITS})
    proc = _start(repo)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)  # only what the writer wrote while training counts
    proc.wait()
    stderr = proc.stderr.read()
    assert "Exception in thread" not in stderr and "Traceback" not in stderr
    assert stderr.count("FlorWarning") == 1 and "flor.log('huge')" in stderr
    assert (_count(repo, "a"), _count(repo, "b"), _count(repo, "huge")) == (3, 3, 2)


def test_a_huge_int_logged_first_is_refused_at_the_users_line_and_the_run_finishes(
        script_repo) -> None:
    repo = script_repo("import flor\n"
                       "for e in flor.loop('epoch', range(3)):\n"
                       "    flor.log('huge', 10 ** 5000)\n"
                       "    flor.log('ok', e)\n")
    proc = run_script(repo, "train.py")
    assert proc.stderr.count("FlorWarning") == 1
    assert "train.py:3: FlorWarning: flor.log('huge')" in proc.stderr
    with florsql.connect(repo) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("finished",)]
    assert (_count(repo, "ok"), _count(repo, "huge")) == (3, 0)


def test_a_record_the_encoder_fails_on_in_any_way_loses_only_itself(script_repo) -> None:
    # a loop name JSON cannot hold: a TypeError deep in the encoder, not the int limit
    repo = script_repo("import flor\n"
                       "for e in flor.loop('epoch', range(2)):\n"
                       "    flor.log('kept', e)\n"
                       "    for i in flor.loop(b'bytes', range(2)):\n"
                       "        flor.log('lost', i)\n")
    proc = run_script(repo, "train.py")
    assert "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr
    assert proc.stderr.count("FlorWarning") == 1 and "flor.log('lost')" in proc.stderr
    assert _count(repo, "kept") == 2


# --- a full or read-only disk ----------------------------------------------------------------


def test_a_full_disk_is_one_warning_and_what_waited_is_written_once_there_is_room(
        tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": FILLS_THE_DISK})
    env = {"FLOR_HOME": str(small_disk), "FLOR_CHECKPOINT_EVERY": "1"}
    proc = run_script(repo, "train.py", "6", env=env)
    assert "trained" in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.count("cannot write records") == 1
    assert _temp_files(small_disk) == []
    monkeypatch.setenv("FLOR_HOME", str(small_disk))
    with florsql.connect(repo) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("finished",)]
    assert _count(repo, "loss") == 800


def test_the_writer_thread_writes_nothing_once_the_runs_last_flush_is_done(
        tmp_path: Path) -> None:
    # at exit the interpreter kills the daemon writer thread wherever it is: a write it began
    # after the last flush would leave a temporary part file (seen under a full disk)
    from flor.recorder import Recorder

    recorder = Recorder(tmp_path / "run", "forward")
    recorder.extend((0, 0, "loss", 1.0))
    recorder.close()
    parts = sorted((tmp_path / "run" / "parts").iterdir())
    recorder.extend((0, 0, "loss", 2.0))
    recorder._writer.write_pending(background=True)  # the thread's late wake-up
    assert len(parts) == 1 and sorted((tmp_path / "run" / "parts").iterdir()) == parts


def test_records_beyond_the_memory_bound_are_dropped_and_counted_at_exit(
        tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": FILLS_THE_DISK})
    env = {"FLOR_HOME": str(small_disk), "FLOR_MAX_UNWRITTEN_MB": "0.001"}
    proc = run_script(repo, "train.py", "6", env=env)
    lost = int(proc.stderr.split(" records of this run were not recorded")[0].split()[-1])
    assert 0 < lost < 800 and "Traceback" not in proc.stderr
    monkeypatch.setenv("FLOR_HOME", str(small_disk))
    assert _count(repo, "loss") == 800 - lost


def test_a_disk_full_until_exit_ends_without_traceback_or_temp_files_and_shows_killed(
        tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": FILLS_THE_DISK})
    env = {"FLOR_HOME": str(small_disk), "FLOR_CHECKPOINT_EVERY": "1"}
    proc = run_script(repo, "train.py", "99", env=env)  # never freed
    assert "trained" in proc.stdout and "Traceback" not in proc.stderr
    assert "end.json (No space left on device); the run will show as killed" in proc.stderr
    assert _temp_files(small_disk) == []
    (small_disk / "ballast").unlink()
    monkeypatch.setenv("FLOR_HOME", str(small_disk))
    with florsql.connect(repo) as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("killed",)]
    assert _count(repo, "loss") == 200  # the two epochs written before the disk filled


def test_a_read_only_project_stops_the_run_with_one_clear_flor_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": "import flor\nflor.arg('x', 1)\n"})
    with _read_only(repo):
        proc = run_script(repo, "train.py", check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("flor.errors.FlorStorageError: flor: cannot record this run: ")
    assert str(repo / ".flor") in last and "Errno" not in proc.stderr
    assert not (repo / ".flor").exists()


class _read_only:  # noqa: N801 - used as `with _read_only(path):`
    """`path` read-only for the block: a read-only bind mount as root, chmod otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def __enter__(self) -> None:
        if os.geteuid() == 0:
            p = str(self.path)
            if _sh("mount", "--bind", p, p) or _sh("mount", "-o", "remount,bind,ro", p):
                _sh("umount", p)
                pytest.skip("a read-only project needs a read-only bind mount for root")
            self.mounted = True
        else:
            for d in [self.path, *(p for p in self.path.rglob("*") if p.is_dir())]:
                d.chmod(0o555)

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            _sh("umount", str(self.path))
        else:
            for d in [self.path, *(p for p in self.path.rglob("*") if p.is_dir())]:
                d.chmod(0o755)


# --- temporary files of crashed runs ---------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_run(home: Path, key: str, pid: int, host: str | None = None) -> Path:
    """A run directory as a killed writer leaves it: a part, a half part, a half checkpoint."""
    run = home / "runs" / key
    (run / "parts").mkdir(parents=True)
    (run / "ckpt").mkdir()
    started = dt.datetime.now().astimezone().isoformat()  # after its process started
    (run / "run.json").write_text(json.dumps({"pid": pid, "hostname": host or socket.gethostname(),
                                              "start_time": started}))
    (run / "parts" / "000001.part").write_bytes(b"whole")
    (run / "parts" / ".000002.part.tmp").write_bytes(b"half")
    (run / "ckpt" / ".epoch-000003.pt.tmp").write_bytes(bytes(1 << 20))
    (run / "heartbeat").touch()
    return run


def _age(run: Path, seconds: float) -> None:
    """As if `seconds` had passed since anything in `run` was written."""
    then = time.time() - seconds
    for path in [run, *run.rglob("*")]:
        os.utime(path, (then, then), follow_symlinks=False)


def test_a_new_run_removes_the_temp_files_a_dead_run_left_and_keeps_its_parts(
        script_repo) -> None:
    repo = script_repo("import time, flor\n"
                       "for e in flor.loop('epoch', range(10)):\n"
                       "    time.sleep(0.1)\n")
    dead = _fake_run(repo / ".flor", "20260101T000000.000000", _dead_pid())
    _age(dead, STALE_SECONDS + 5)
    run_script(repo, "train.py")
    assert _temp_files(dead) == []
    assert (dead / "parts" / "000001.part").read_bytes() == b"whole"


def test_temp_files_of_a_live_or_recently_silent_writer_are_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    live = _fake_run(home, "live", os.getpid())  # this process: alive, though silent for long
    _age(live, 3 * STALE_SECONDS)
    recent = _fake_run(home, "recent", _dead_pid())  # dead, but its heartbeat is fresh
    _age(recent, STALE_SECONDS / 2)
    remote = _fake_run(home, "remote", 1, host="another-host")  # no pid to check: 1 h rule
    _age(remote, 10 * STALE_SECONDS)
    assert clean_stale_temp_files(home) == []
    (live / "run.json").write_text(json.dumps({  # the pid reused by a process started later
        "pid": os.getpid(), "hostname": socket.gethostname(), "start_time": "2000-01-01"}))
    _age(live, 3 * STALE_SECONDS)
    assert len(clean_stale_temp_files(home)) == 2
    _age(remote, 2 * 3600)
    assert sorted(p.name for p in clean_stale_temp_files(home)) == [
        ".000002.part.tmp", ".epoch-000003.pt.tmp"]


def test_cleaning_never_follows_a_symlink_out_of_the_flor_home(tmp_path: Path) -> None:
    outside = _fake_run(tmp_path / "elsewhere", "victim", _dead_pid())
    _age(outside, STALE_SECONDS + 5)
    home = tmp_path / "home"
    dead = _fake_run(home, "dead", _dead_pid())
    (home / "runs" / "linked-run").symlink_to(outside)
    (dead / "parts" / ".000009.part.tmp").symlink_to(outside / "parts" / ".000002.part.tmp")
    _age(dead, STALE_SECONDS + 5)
    removed = clean_stale_temp_files(home)
    assert sorted(removed) == sorted([dead / "parts" / ".000002.part.tmp",
                                      dead / "ckpt" / ".epoch-000003.pt.tmp"])
    assert len(_temp_files(outside)) == 2
    assert (dead / "parts" / ".000009.part.tmp").is_symlink()


CHECKPOINTS_FOREVER = """
import os, flor
class Blob:
    def __init__(self): self.data = os.urandom(40 << 20)
    def state_dict(self): return {"data": self.data}
    def load_state_dict(self, state): self.data = state["data"]
with flor.checkpointing(blob=Blob()):
    for epoch in flor.loop("epoch", range(10 ** 6)):
        flor.log("epoch_seen", epoch)
"""


def test_a_kill_9_mid_checkpoint_leaves_a_temp_file_that_the_next_run_removes(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {"train.py": CHECKPOINTS_FOREVER, "ok.py": "import flor\n"
                                         "for e in flor.loop('epoch', range(10)):\n"
                                         "    __import__('time').sleep(0.1)\n"})
    for _ in range(5):  # a 40 MB checkpoint is being written nearly all the time
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=repo,
                                env={**os.environ, "FLOR_CHECKPOINT_EVERY": "1"},
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and not list((repo / ".flor").rglob(".*.pt.tmp")):
            time.sleep(0.002)
        proc.kill()
        proc.wait()
        if _temp_files(repo / ".flor"):
            break
    killed = next((repo / ".flor" / "runs").iterdir())
    assert _temp_files(killed)
    _age(killed, STALE_SECONDS + 5)
    run_script(repo, "ok.py")
    assert _temp_files(repo / ".flor") == []
    with florsql.connect(repo) as conn:
        statuses = sorted(s for (s,) in conn.execute("SELECT status FROM runs").fetchall())
    assert statuses[0] == "finished" and set(statuses[1:]) == {"killed"}


# --- the command line and the code snapshot --------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["--kwargs", "epochs"], "flor: --kwargs epochs has no value; write --kwargs epochs=VALUE"),
    (["--kwargs", "lr=0.1", "epochs"], "flor: --kwargs epochs has no value"),
    (["--kwargs"], "flor: --kwargs is not followed by any key=value pair"),
])
def test_kwargs_without_a_value_stop_the_run_before_it_records_anything(
        script_repo, argv: list[str], expected: str) -> None:
    repo = script_repo("import flor\nflor.arg('epochs', 3)\nflor.arg('lr', 0.5)\n")
    proc = run_script(repo, "train.py", *argv, check=False)
    assert proc.returncode == 1
    assert f"FlorArgError: {expected}" in proc.stderr.strip().splitlines()[-1]
    assert not (repo / ".flor" / "runs").exists()


RECORDED = """
import flor
for epoch in flor.loop("epoch", range(3)):
    x = epoch * 10
    flor.log("x", x)
"""


def test_a_script_git_ignores_is_snapshot_anyway_and_a_replay_finds_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "proj", {".gitignore": "train.py\n"})
    (repo / "train.py").write_text(RECORDED)
    run_script(repo, "train.py", "--flor", "first")
    run_script(repo, "train.py", "--flor", "second")
    with florsql.connect(repo) as conn:
        vids = {v for (v,) in conn.execute("SELECT vid FROM runs").fetchall()}
    assert len(vids) == 1  # the same code, the same vid
    assert git(repo, "show", f"{vids.pop()}:train.py") == RECORDED.strip()
    assert git(repo, "status", "--porcelain") == ""  # still ignored, still untracked
    (repo / "train.py").write_text(RECORDED + '    flor.log("x_squared", x * x)\n')
    assert main(["replay", "x_squared", "--project", str(repo)]) == 0
    with florsql.connect(repo) as conn:
        values = conn.execute("SELECT value_num FROM logs WHERE value_name = 'x_squared' "
                              "ORDER BY value_num").fetchall()
    assert values == [(0.0,), (0.0,), (100.0,), (100.0,), (400.0,), (400.0,)]


def test_opening_the_catalog_cleans_a_dead_runs_stale_temporary_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "sweep", {"train.py": "import flor\nflor.log('x', 1.0)\n"})
    run_script(repo, "train.py")
    [run_dir] = (repo / ".flor" / "runs").iterdir()
    (run_dir / "end.json").unlink()  # as if it had been killed
    stale = run_dir / "parts" / ".000009.part.tmp"
    stale.write_bytes(b"half a part")
    old = time.time() - 3600
    for path in (stale, run_dir / "heartbeat", run_dir / "run.json"):
        if path.exists():
            os.utime(path, (old, old))
    with florsql.connect(repo) as conn:
        deadline = time.monotonic() + 10
        while stale.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conn.execute("SELECT count(*) FROM logs").fetchone()[0] >= 1
    assert not stale.exists()
