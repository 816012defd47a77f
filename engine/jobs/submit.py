"""Queue a batch: check every job against its script first, snapshot the code, then enqueue.

    queued = queue_batch(jobs, script="train.py", name="BATCH", path=".")
    queued.ids, queued.jobs        # one Job per dict, in order

Nothing is queued unless all of it can be: a missing script, an arg name the script never
reads, a value that is not a plain scalar, or a bad batch name fails with one line.
"""

from __future__ import annotations

import ast
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flor import protocol

from ..errors import EngineError
from .model import BATCH, BATCH_PRIORITY, QUEUED, Job
from .store import JobQueue, NewJob

SCALARS = (bool, int, float, str)


class BatchError(EngineError):
    """A batch that cannot be queued; nothing of it was."""


@dataclass(frozen=True)
class Queued:
    ids: list[int]
    jobs: list[Job]
    home: Path


def queue_batch(jobs: list[dict[str, Any]], *, script: str, name: str,
                time_limit: float | None = None, retries: int = 0,
                path: str = ".") -> Queued:
    root, home = project_of(path)
    rel = _script_path(root, Path(path).expanduser().resolve(), script)
    check_jobs(jobs, rel, (root / rel).read_text(), name)
    vid = _snapshot(root, rel)
    news = [NewJob(BATCH, name, rel, dict(job), vid, BATCH_PRIORITY, str(root),
                   time_limit=time_limit, retries=retries) for job in jobs]
    ids = JobQueue.open(home).enqueue(news)
    made = [Job(i, BATCH, name, rel, dict(job), vid, QUEUED, 0, 0, 0, time_limit, None, False)
            for i, job in zip(ids, jobs, strict=True)]
    return Queued(ids, made, home)


def project_of(path: str) -> tuple[Path, Path]:
    """The git top-level at `path` and its flor home (made if needed)."""
    from flor import gitrepo
    from flor.run import flor_home
    from flor.snapshot import exclude_from_git

    start = Path(path).expanduser().resolve()
    root = gitrepo.toplevel(start)
    if root is None:
        raise BatchError(f"{start} is not inside a git repository: jobs belong to a project's "
                         "repository; run from the project, or name it (path=, --project)")
    exclude_from_git(root, f"/{protocol.HOME_DIRNAME}/")
    return root, flor_home(root)


def check_jobs(jobs: list[dict[str, Any]], script: str, source: str, name: str) -> None:
    if not name or any(c in name for c in "/\\\0\n") or name.startswith("-"):
        raise BatchError(f"batch name {name!r} cannot name a run: use letters, digits, - or _")
    known = arg_names(source)
    for k, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise BatchError(f"job {k} is a {type(job).__name__}, not a dict of args: build "
                             "the jobs with flor.cross_prod(name=[values], ...)")
        for key, value in job.items():
            if known is not None and key not in known:
                raise BatchError(unknown_arg(key, script, known))
            if not isinstance(value, SCALARS) or (isinstance(value, float)
                                                  and not math.isfinite(value)):
                raise BatchError(f"job {k}: {key}={value!r} is not a number, string or bool "
                                 "that a command line can carry")


def unknown_arg(key: str, script: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    names = ", ".join(sorted(known)) or "none"
    return (f"{script} has no flor.arg({key!r}){hint}; its args are: {names}. Nothing was "
            "queued")


def arg_names(source: str) -> set[str] | None:
    """The literal names of the script's `flor.arg("name", ...)` calls (also through `import
    flor as f`, `from flor import arg` and MTK's `Flor.arg`); None when a name is not a
    literal or the script does not parse, so that no arg can be ruled out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    modules, functions = _flor_aliases(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_arg_call(node.func, modules, functions):
            first = node.args[0] if node.args else next(
                (kw.value for kw in node.keywords if kw.arg == "name"), None)
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                return None
            names.add(first.value)
    return names


def _flor_aliases(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names the script gives flor (and MTK's Flor), and flor's `arg` function."""
    modules, functions = {"flor", "Flor"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "flor"}
        elif isinstance(node, ast.ImportFrom) and node.module == "flor":
            functions |= {a.asname or a.name for a in node.names if a.name == "arg"}
            modules |= {a.asname or a.name for a in node.names if a.name == "MTK"}
    return modules, functions


def _is_arg_call(func: ast.expr, modules: set[str], functions: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in functions
    return (isinstance(func, ast.Attribute) and func.attr == "arg"
            and isinstance(func.value, ast.Name) and func.value.id in modules)


def _script_path(root: Path, start: Path, script: str) -> str:
    """`script` (relative to `start`, else to the project root) relative to the project root;
    it must be a file of the project."""
    candidate = (start / script).resolve()
    if not candidate.is_file():
        candidate = (root / script).resolve()
    if not candidate.is_file():
        raise BatchError(f"no script {script!r} in {root}: pass script= the training "
                         "script's path. Nothing was queued")
    try:
        return candidate.relative_to(root).as_posix()
    except ValueError:
        raise BatchError(f"{candidate} is outside the project {root}: a job runs a script "
                         "of the project's own code") from None


def _snapshot(root: Path, script: str) -> str:
    from flor.snapshot import snapshot_worktree

    return snapshot_worktree(root, script)
