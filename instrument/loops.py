"""`flor.loop`: names loop dimensions, drives checkpoints and replay at outer-loop boundaries."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from . import protocol
from .part_encode import SEGMENT_STEPS, STEP_INTS

if TYPE_CHECKING:
    from .run import Session

T = TypeVar("T")
_DEFAULT_NAMES = ("epoch", "step")
# Wake the record writer at the end of an outer iteration at most this often: a loop of tiny
# outer iterations (no epoch loop) must not write and fsync a part per iteration.
MIN_FLUSH_INTERVAL = 0.25


def default_loop_name(depth: int) -> str:
    """Unnamed loops: depth 0 is `epoch`, depth 1 `step`, deeper `loop2`, `loop3`, ..."""
    return _DEFAULT_NAMES[depth] if depth < len(_DEFAULT_NAMES) else f"loop{depth}"


def iterate(session: Session, name: str | None, iterable: Iterable[T]) -> Iterator[T]:
    """Yield the items of `iterable`, keeping the recorder's loop context up to date.

    A step costs the loop no allocation: iteration `first + k` of an inner loop is position
    `STEP_INTS[k]` (an int made once) of the segment it opened (`part_encode.ContextIds`).
    """
    rec = session.recorder
    depth = rec.depth
    name = name or default_loop_name(depth)
    parent_seg, parent_step = rec.seg, rec.step
    rec.depth = depth + 1
    try:
        if depth == 0:
            yield from _outer(session, name, iterable)
        elif depth == 1 and session.memo_pending is not None:
            _skip_inner_loop(session)  # memoized: jump to the state at its end, yield nothing
        else:
            items, first, open_segment = iter(iterable), 0, rec.contexts.open
            while True:  # one segment per SEGMENT_STEPS iterations
                seg, k = open_segment(parent_seg, parent_step, name, first), 0
                for k, item in zip(STEP_INTS, items, strict=False):
                    rec.seg = seg  # with each step: a flor.log on another thread never
                    # pairs this segment with the parent's step
                    rec.step = k
                    yield item
                if k < SEGMENT_STEPS - 1:
                    break
                first += SEGMENT_STEPS
    finally:
        rec.depth = depth
        rec.seg, rec.step = parent_seg, parent_step


def _outer(session: Session, name: str, iterable: Iterable[T]) -> Iterator[T]:
    rec, ckpt, replay = session.recorder, session.checkpointer, session.replay
    session.check_unread_kwargs()
    total = _length(iterable)
    start, stop = replay.window(name) if replay else (0, None)
    last = last_flush = time.perf_counter()
    i = -1
    seg = first = 0  # iteration i is step i - first of segment seg
    segment_end = -1
    for i, item in enumerate(iterable):
        if i < start:
            continue
        if stop is not None and i >= stop:
            _end_replay(session)
        if i >= segment_end:
            seg, first, segment_end = rec.contexts.open(0, 0, name, i), i, i + SEGMENT_STEPS
        rec.seg, rec.step = seg, STEP_INTS[i - first]
        now = time.perf_counter()
        skip = False
        if replay and i == start and (i > 0 or ckpt.has(replay.run_dir, name, i)):
            # from the top, a run that saved no checkpoint starts as the original did
            ckpt.restore(replay.run_dir, name, i)
        elif replay and not replay.memoize and ckpt.has(replay.run_dir, name, i):
            ckpt.restore(replay.run_dir, name, i)  # a side effect of a new statement stops here
        if replay and replay.memoize and ckpt.has(replay.run_dir, name, i + 1):
            # memoized: the inner loop is skipped by restoring the state saved at its end;
            # an iteration whose end state was not saved runs its inner loop in full
            session.memo_pending, skip = (name, i + 1), True
        elif not replay:
            ckpt.at_boundary(name, i, total, now - last)
        last = time.perf_counter()
        yield item
        if skip:  # the code after the skipped inner loop has run: check what it did
            _verify_memoized(session, name, i + 1)
        now = time.perf_counter()
        rec.iterations.append((name, i, now - last))
        if now - last_flush >= MIN_FLUSH_INTERVAL:
            rec.flush_soon()
            last_flush = now
    if not replay and i >= 0:
        rec.seg = rec.step = 0
        ckpt.at_boundary(name, i + 1, i + 1, time.perf_counter() - last)


# A memoized replay whose code after the inner loop changed the checkpointed state or drew
# random numbers exits with this code; the executor then replays that run in full.
MEMO_UNSAFE_EXIT = protocol.EXIT_MEMO_UNSAFE


def _skip_inner_loop(session: Session) -> None:
    loop, end = session.memo_pending
    session.memo_pending = None
    session.checkpointer.restore(session.replay.run_dir, loop, end)


def _verify_memoized(session: Session, loop: str, iteration: int) -> None:
    """After the code that follows a skipped inner loop, the state must still equal the end
    state that was restored, or that code's values would not be the original run's."""
    session.memo_pending = None
    problem = session.checkpointer.differs_from(session.replay.run_dir, loop, iteration)
    if problem:
        print(f"flor: memoization unsafe at {loop}={iteration - 1}: {problem}",
              file=sys.stderr, flush=True)
        session.finish("failed", "memoization unsafe")
        os._exit(MEMO_UNSAFE_EXIT)


def _end_replay(session: Session) -> None:
    """A replay that reached its stop iteration ends the process: what follows the loop would
    run on a half-trained state and log wrong values."""
    session.finish("finished")
    sys.stdout.flush()
    os._exit(0)


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None
