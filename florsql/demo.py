"""The demo: train the example script a few times in a scratch git repo, query the history,
then ask for a value no run logged (`val_loss`), which florsql replays from checkpoints.

    python -m florsql.demo [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .dbapi import Connection
from .formatting import format_rows

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train.py"
RUNS = [
    ("baseline", ["--kwargs", "lr=0.01", "hidden=16"]),
    ("fasterLR", ["--kwargs", "lr=0.05", "hidden=16"]),
    ("smallerModel", ["--kwargs", "lr=0.05", "hidden=4"]),
]
QUERY = """\
SELECT runid, left(vid, 8) AS vid, lr, hidden,
       arg_max(accuracy, epoch) AS final_accuracy,
       max(accuracy) AS best_accuracy
FROM history
GROUP BY runid, vid, lr, hidden, tstamp
ORDER BY tstamp"""
NEW_STATEMENT = '            flor.log("val_loss", criterion(model(x), y).item())\n'
RETRO_QUERY = """\
SELECT runid, epoch, round(accuracy, 3) AS accuracy, round(val_loss, 4) AS val_loss
FROM history WHERE lr > 0.02 AND epoch >= 3
ORDER BY tstamp, epoch"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m florsql.demo", description=__doc__)
    parser.add_argument("--dir", help="where to make the scratch repo (default: a temp dir)")
    args = parser.parse_args(argv)
    repo = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="florsql-demo-"))
    _make_repo(repo)
    for runid, kwargs in RUNS:
        _train(repo, runid, kwargs)
    script = repo / "train.py"
    script.write_text(script.read_text().replace("momentum=0.9", "momentum=0.5"))
    print("\n# edited train.py (momentum 0.9 -> 0.5), not committed: a new code version")
    _train(repo, "lowMomentum", ["--kwargs", "lr=0.05", "hidden=16"])
    print(f"\n# florsql -c <query> {repo}\n{QUERY};\n")
    with Connection(str(repo)) as conn:
        cur = conn.execute(QUERY)
        print(format_rows([d[0] for d in cur.description], cur.fetchall()))
    _hindsight(repo)
    print(next_steps(repo))
    return 0


def next_steps(repo: Path) -> str:
    """How to reach `florsql` from here: it lives in this interpreter's venv, which is
    probably not on the PATH, so both the activate line and the full path are given."""
    bin_dir = Path(sys.executable).parent
    florsql = bin_dir / "florsql"
    lines = ["", "# next: florsql is installed in this venv; either activate it first",
             f"source {bin_dir / 'activate'}",
             f"florsql {repo}                       # the shell; .help lists its commands",
             f"florsql run best_epoch {repo}",
             "# or call it by its full path, without activating:",
             f"{florsql} {repo}"]
    return "\n".join(lines)


def _hindsight(repo: Path) -> None:
    """Log something new today and ask for it over the past runs: they are replayed."""
    from .progress import replay_progress
    from .retroactive import describe_plan

    script = repo / "train.py"
    anchor = "            accuracy = ((model(x) > 0).float() == y).float().mean().item()\n"
    script.write_text(script.read_text().replace(anchor, anchor + NEW_STATEMENT))
    print(f"\n# hindsight: today's train.py also logs val_loss:\n{NEW_STATEMENT.strip()}")
    print(f"\n# florsql --yes -c <query> {repo}\n{RETRO_QUERY};\n")
    with Connection(str(repo), replay="auto", workers=2, progress=replay_progress()) as conn:
        print(describe_plan(conn.execute("EXPLAIN REPLAY " + RETRO_QUERY).replay_plan))
        cur = conn.execute(RETRO_QUERY)
        print(format_rows([d[0] for d in cur.description], cur.fetchall()))
        for _, message in cur.messages:
            print(f"warning: {message}")


def _make_repo(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, repo / "train.py")
    env = {**os.environ, "GIT_AUTHOR_NAME": "demo", "GIT_AUTHOR_EMAIL": "demo@localhost",
           "GIT_COMMITTER_NAME": "demo", "GIT_COMMITTER_EMAIL": "demo@localhost"}
    for cmd in (["init", "-q"], ["add", "train.py"], ["commit", "-q", "-m", "example script"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
    print(f"# scratch repo: {repo}")


def _train(repo: Path, runid: str, kwargs: list[str]) -> None:
    print(f"\n# python train.py --flor {runid} {' '.join(kwargs)}")
    subprocess.run([sys.executable, "train.py", "--flor", runid, *kwargs], cwd=repo, check=True)


if __name__ == "__main__":
    sys.exit(main())
