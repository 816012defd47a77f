"""flor: record training runs for florsql (FlorDB-compatible API).

    import flor
    lr = flor.arg("lr", 1e-3)
    with flor.checkpointing(model=net, optimizer=opt):
        for epoch in flor.loop("epoch", range(5)):
            for batch in flor.loop("step", loader):
                flor.log("loss", loss.item())
"""

from __future__ import annotations

from .api import MTK, arg, checkpointing, checkpoints, commit, log, loop
from .batch import batch, cross_prod
from .errors import (
    FlorArgError,
    FlorCheckpointError,
    FlorError,
    FlorNameError,
    FlorReplayError,
    FlorRepoError,
    FlorStorageError,
    FlorWarning,
)
from .hindsight import replay
from .history import DATA_PREP, dataframe, full_pivot, log_records, query

__all__ = [
    "DATA_PREP",
    "MTK",
    "FlorArgError",
    "FlorCheckpointError",
    "FlorError",
    "FlorNameError",
    "FlorRepoError",
    "FlorReplayError",
    "FlorStorageError",
    "FlorWarning",
    "arg",
    "batch",
    "checkpointing",
    "checkpoints",
    "commit",
    "cross_prod",
    "dataframe",
    "full_pivot",
    "log_records",
    "query",
    "replay",
    "log",
    "loop",
]
