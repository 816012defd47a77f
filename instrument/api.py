"""The recording API that training scripts call: `flor.arg`, `flor.log`, `flor.loop`, ...

Nothing is started at import: the run begins at the first `flor.*` call, so a script that only
imports flor (or a notebook reading history) never becomes a run.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from . import args as flor_args
from .errors import FlorWarning
from .loops import iterate
from .recorder import Recorder
from .run import Session, install_exit_hooks
from .values import has_too_many_digits, is_unsupported, refusal_reason, to_recordable

T = TypeVar("T")
_SCALARS = frozenset({float, int, str, bool, type(None)})
_FLOR_ARGV = flor_args.strip_flor_argv(sys.argv)
_session: Session | None = None
_recorder = None


def session() -> Session:
    """The recording session of this process, started on first use."""
    global _session, _recorder
    if _session is None:
        _session = Session(_FLOR_ARGV)
        _recorder = _session.recorder
        _bind_log(_recorder)
        install_exit_hooks(_session)
    return _session


def _make_log() -> tuple[Callable[[str, T], T], Callable[[Recorder], None]]:
    """`flor.log`, plus the function that points it at the session's recorder.

    The common call (a float under a name logged before) reads the recorder through closure
    cells instead of module globals and attributes, and appends the record with one
    `list.extend` of a tuple that dies at once (see `recorder`): nothing it allocates is left
    for the garbage collector but the value itself.
    """
    rec: Any = None
    known: set[str] | frozenset[str] = frozenset()  # the recorder's names, updated in place
    extend: Callable[[tuple], None] | None = None

    def log(name: str, value: T) -> T:
        """Record `value` under `name` at the current loop context and return it unchanged."""
        if type(value) is float and name in known:
            extend((rec.seg, rec.step, name, value))
            return value
        return _log_any(name, value)

    def bind(recorder: Recorder) -> None:
        nonlocal rec, known, extend
        rec, known, extend = recorder, recorder.known_names, recorder.extend

    log.__qualname__ = "log"
    return log, bind


def _log_any(name: str, value: T) -> T:
    """flor.log's first call for a name, a replay's unrecorded names, and values other than
    floats (recorded under the name's tag `(name,)`, so the writer sees them by their name)."""
    rec = _recorder or session().recorder
    if name not in rec.known_names and not rec.admit_name(name):
        return value
    if type(value) in _SCALARS and not (type(value) is int and has_too_many_digits(value)):
        rec.extend((rec.seg, rec.step, name if type(value) is float else rec.tag(name),
                    value))
        return value
    stored = to_recordable(value)  # a huge int logged later under a known name: part_writer
    if not is_unsupported(stored):
        rec.extend((rec.seg, rec.step, name if type(stored) is float else rec.tag(name),
                    stored))
    elif refusal_reason(stored) is None:
        rec.warn_unsupported(name, value)
    elif (name, "refused") not in rec.warned:  # once per name, as for unsupported types
        rec.warned.add((name, "refused"))
        warnings.warn(f"flor.log({name!r}): a {refusal_reason(stored)}", FlorWarning,
                      stacklevel=3)
    return value


log, _bind_log = _make_log()


def arg(name: str, default: Any = None) -> Any:
    """A hyper-parameter: `default`, unless the command line sets it; recorded per run.

    `python train.py --kwargs lr=0.01` (FlorDB 4) or `python train.py --lr 0.01` (FlorDB 2)
    override it, cast to the type of `default`.
    """
    sess = session()
    if name in sess.args:
        return sess.args[name]
    raw = flor_args.take_cli_value(_FLOR_ARGV, name)
    value = default if raw is None else flor_args.cast_value(name, raw, default)
    sess.args[name] = value
    if not sess.replay:
        rec = sess.recorder
        if name not in rec.known_names:
            rec.admit_name(name)
        stored = to_recordable(value)
        rec.args.append((name, None if is_unsupported(stored) else stored))
    return value


def loop(name: str | Iterable[T], iterable: Iterable[T] | None = None) -> Iterator[T]:
    """Iterate while recording the loop dimension: `flor.loop("epoch", range(5))`.

    `flor.loop(iterable)` names the dimension by depth: `epoch`, then `step`, then `loop2`...
    """
    if iterable is None:
        if isinstance(name, str):
            raise TypeError("flor.loop(name, iterable): the iterable is missing")
        return iterate(session(), None, name)
    return iterate(session(), name, iterable)


def checkpoints(*objs: Any, **named: Any) -> None:
    """Register objects with state_dict/load_state_dict for exact-resume checkpoints."""
    positional = {f"obj{i}": obj for i, obj in enumerate(objs)}
    session().checkpointer.register({**positional, **named})


@contextlib.contextmanager
def checkpointing(**named: Any) -> Iterator[None]:
    """`with flor.checkpointing(model=net, optimizer=opt):` registers them for the block."""
    ckpt = session().checkpointer
    ckpt.register(named)
    try:
        yield
    finally:
        ckpt.wait()
        for key in named:
            ckpt.objects.pop(key, None)


def commit() -> None:
    """Flush records to disk now and wait for pending checkpoints (also runs at exit)."""
    if _session is not None:
        _session.checkpointer.wait()
        _session.recorder.flush()


class MTK:
    """FlorDB 2.x's Model Training Kit: `from flor import MTK as Flor`."""

    checkpoints = staticmethod(checkpoints)
    loop = staticmethod(loop)
