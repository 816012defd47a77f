"""A replay task's result as the queue keeps it: JSON in the job's `result` column."""

from __future__ import annotations

import json

from ..replay.model import ReplayTask, TaskResult


def result_to_json(result: TaskResult) -> str:
    return json.dumps({"ok": result.ok, "seconds": result.seconds, "error": result.error,
                       "memoized": result.memoized, "pooled": result.pooled,
                       "stopped": result.stopped})


def result_from_json(raw: str, task: ReplayTask) -> TaskResult:
    doc = json.loads(raw)
    return TaskResult(task, bool(doc["ok"]), float(doc["seconds"]), doc.get("error"),
                      memoized=bool(doc.get("memoized")), pooled=bool(doc.get("pooled")),
                      stopped=doc.get("stopped"))
