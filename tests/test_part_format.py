"""Record parts round-trip: what the writer encodes, ingest reads back exactly."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import florsql
from conftest import run_script
from flor.part_encode import (
    MAGIC,
    SEGMENT_STEPS,
    STEP_INTS,
    ContextIds,
    encode_part,
    encode_records,
)
from florsql.engine.catalog.parts import PartError, read_part
from florsql.engine.catalog.rows import RowBatch, rows_of_part


def _write(tmp_path: Path, data: bytes, name: str = "000001.part") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _paths(doc: dict) -> list[str]:
    """Each record's context as a path, resolved through the part's own definitions."""
    paths = {0: ""}
    for cid, parent, loop, iteration in doc["contexts"]:
        step = f"{loop}={iteration}"
        paths[cid] = f"{paths[parent]}/{step}" if paths[parent] else step
    return [paths[c] for c in doc["ctx"]]


def _path_of(ctx: tuple | None) -> str:
    steps = []
    while ctx is not None:
        ctx, loop, iteration = ctx
        steps.append(f"{loop}={iteration}")
    return "/".join(reversed(steps))


values = st.one_of(
    st.floats(allow_nan=False), st.integers(-2**70, 2**70), st.booleans(), st.none(),
    st.text(max_size=8), st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2))


@st.composite
def record_batches(draw) -> list[tuple]:
    """Records as flor.loop makes them: nested loops, logs at any depth, returns to parents."""
    records, stack = [], [None]
    for _ in range(draw(st.integers(0, 40))):
        action = draw(st.sampled_from(["log", "log", "enter", "leave"]))
        if action == "enter" and len(stack) < 4:
            stack.append((stack[-1], f"loop{len(stack)}", draw(st.integers(0, 10**12))))
        elif action == "leave" and len(stack) > 1:
            stack.pop()
        else:
            records.append((stack[-1], draw(st.sampled_from(["loss", "acc", "Ünï", "x"])),
                            draw(values)))
    return records


@settings(max_examples=150, deadline=None)
@given(records=record_batches())
def test_any_batch_of_records_reads_back_as_written(tmp_path_factory, records) -> None:
    path = _write(tmp_path_factory.mktemp("part"),
                  encode_part(records, [["epoch", 0, 0.5]], [["lr", 0.1]], "forward", 7))
    doc = read_part(path)
    assert _paths(doc) == [_path_of(c) for c, _, _ in records]
    assert doc["name"] == [n for _, n, _ in records]
    assert doc["value"] == [v for _, _, v in records]
    assert [type(v) for v in doc["value"]] == [type(v) for _, _, v in records]
    assert (doc["seq"], doc["args"], doc["iterations"]) == (7, [["lr", 0.1]], [["epoch", 0, 0.5]])


# --- a run's records, as flor.loop and flor.log keep them (encode_records) ------------------


class _Run:
    """Records as a run holds them: (segment, step, name or its tag, value), contexts in
    `ContextIds`, steps from STEP_INTS, the way flor.loop and flor.log make them."""

    def __init__(self) -> None:
        self.contexts = ContextIds()
        self.records: list[tuple] = []
        self.stack = [(0, 0)]  # the current (segment, step) of each open loop

    def enter(self, loop: str, first: int = 0) -> None:
        seg, step = self.stack[-1]
        self.stack.append((self.contexts.open(seg, step, loop, first), 0))

    def leave(self) -> None:
        self.stack.pop()

    def step(self, k: int) -> None:
        self.stack[-1] = (self.stack[-1][0], STEP_INTS[k])

    def log(self, name: str, value: object) -> None:
        seg, step = self.stack[-1]
        self.records.append((seg, step, name if type(value) is float else (name,), value))

    def read_back(self, tmp_path: Path, seq: int = 1) -> dict:
        columns = [list(c) for c in zip(*self.records, strict=True)] or [[], [], [], []]
        pieces = encode_records(*columns, self.contexts, [["epoch", 0, 0.5]], [["lr", 0.1]],
                                "forward", seq)
        return read_part(_write(tmp_path, b"".join(pieces)))

    def check(self, doc: dict) -> None:
        assert _paths(doc) == [_path_of(self.contexts.path(s, k)) for s, k, _, _ in self.records]
        assert doc["name"] == [n if type(n) is str else n[0] for _, _, n, _ in self.records]
        assert doc["value"] == [v for *_, v in self.records]
        assert [type(v) for v in doc["value"]] == [type(v) for *_, v in self.records]
        assert (doc["args"], doc["iterations"]) == ([["lr", 0.1]], [["epoch", 0, 0.5]])


@st.composite
def runs(draw) -> _Run:
    """Nested loops entered and left, single records at any depth, and regular stretches
    (every `stride`-th step logs the same names), so both encoding paths are taken."""
    run = _Run()
    for _ in range(draw(st.integers(0, 30))):
        action = draw(st.sampled_from(["log", "stretch", "stretch", "enter", "leave", "step"]))
        if action == "enter" and len(run.stack) < 4:
            run.enter(f"loop{len(run.stack)}", draw(st.sampled_from([0, 0, 3, SEGMENT_STEPS])))
        elif action == "leave" and len(run.stack) > 1:
            run.leave()
        elif action == "step" and len(run.stack) > 1:
            run.step(draw(st.integers(0, SEGMENT_STEPS - 1)))
        elif action == "stretch" and len(run.stack) > 1:
            start, stride = draw(st.integers(0, 50)), draw(st.integers(1, 3))
            names = draw(st.lists(st.sampled_from(["loss", "acc", "x"]), min_size=1,
                                  max_size=3))
            for k in range(start, start + stride * draw(st.integers(1, 40)), stride):
                run.step(k)
                for name in names:
                    run.log(name, draw(st.one_of(st.floats(allow_nan=False), values)))
        else:
            run.log(draw(st.sampled_from(["loss", "acc", "Ünï", "x"])), draw(values))
    return run


@settings(max_examples=200, deadline=None)
@given(run=runs())
def test_any_run_of_records_reads_back_as_logged(tmp_path_factory, run) -> None:
    run.check(run.read_back(tmp_path_factory.mktemp("part")))


def _training(run: _Run, epochs: int, steps: int, names: tuple[str, ...], every: int = 1,
              first_step: int = 0) -> None:
    """An epoch loop, a step loop logging `names` every `every` steps, `val` per epoch."""
    run.enter("epoch")
    for epoch in range(epochs):
        run.step(epoch)
        run.log("lr", 0.1)
        run.enter("step")
        for k in range(first_step, steps, every):
            run.step(k)
            for name in names:
                run.log(name, float(k))
        run.leave()
        run.log("val", epoch)  # an int: a tagged record between the float ones
    run.leave()


@pytest.mark.parametrize(("names", "every", "first_step"), [
    (("loss",), 1, 0), (("loss", "acc"), 1, 0), (("loss",), 10, 0), (("loss",), 1, 4_000)])
def test_regular_training_logs_read_back_as_logged(tmp_path, names, every, first_step) -> None:
    run = _Run()
    run.log("seed", 7)
    _training(run, 3, 5_000, names, every, first_step)
    run.log("done", 1.0)
    run.check(run.read_back(tmp_path))


def test_steps_logging_different_numbers_of_records_read_back_as_logged(tmp_path) -> None:
    run = _Run()
    run.enter("epoch")
    run.step(0)
    run.enter("step")
    for k in range(3_000):  # loss every step, acc every third, none of them skipped
        run.step(k)
        run.log("loss", 0.5)
        if k % 3 == 0:
            run.log("acc", 1)
    run.leave()
    run.log("val", 2.0)
    run.check(run.read_back(tmp_path))


def test_a_loop_longer_than_a_segment_continues_its_iterations(tmp_path) -> None:
    run = _Run()
    run.enter("epoch")
    run.step(0)
    for first in (0, SEGMENT_STEPS):  # what flor.loop does after SEGMENT_STEPS iterations
        run.enter("step", first)
        for k in (0, 1, SEGMENT_STEPS - 1):
            run.step(k)
            run.log("loss", 1.0)
        run.leave()
    doc = run.read_back(tmp_path)
    run.check(doc)
    assert _paths(doc)[-3:] == [f"epoch=0/step={SEGMENT_STEPS + k}"
                                for k in (0, 1, SEGMENT_STEPS - 1)]


def test_a_step_logged_again_after_an_inner_loop_is_one_context(tmp_path) -> None:
    run = _Run()
    run.enter("epoch")
    for epoch in range(2):
        run.step(epoch)
        run.log("a", 1.0)
        run.enter("step")
        for k in range(3):
            run.step(k)
            run.log("loss", 2.0)
        run.leave()
        run.log("b", 3.0)
    doc = run.read_back(tmp_path)
    run.check(doc)
    batch = RowBatch(tstamp="2026-01-01 00:00:00", paths=True)
    rows_of_part(doc, batch, {})
    assert sorted(c[2] for c in batch.contexts) == sorted(
        ["", "epoch=0", "epoch=1", *(f"epoch={e}/step={k}" for e in range(2) for k in range(3))])


def test_non_finite_floats_and_exact_doubles_survive(tmp_path) -> None:
    epoch = (None, "epoch", 0)
    floats = [math.inf, -math.inf, 0.1 + 0.2, 5e-324, -0.0]
    records = [((epoch, "step", i), "loss", v) for i, v in enumerate(floats)]
    records.append((epoch, "nan", math.nan))
    doc = read_part(_write(tmp_path, encode_part(records, [], [], "replay", 1)))
    assert doc["value"][:5] == floats and math.copysign(1, doc["value"][4]) == -1
    assert math.isnan(doc["value"][5])
    assert doc["source"] == "replay"


def test_a_part_that_starts_mid_epoch_defines_the_epoch_again(tmp_path) -> None:
    epoch = (None, "epoch", 3)
    records = [((epoch, "step", i), "loss", float(i)) for i in range(4, 6)]
    doc = read_part(_write(tmp_path, encode_part(records, [], [], "forward", 2)))
    batch = RowBatch(tstamp="2026-01-01 00:00:00", paths=True)
    rows_of_part(doc, batch, {})
    assert [c[2] for c in batch.contexts] == ["", "epoch=3", "epoch=3/step=4", "epoch=3/step=5"]


def _tampered(tmp_path: Path, change) -> Path:
    records = [((None, "epoch", 0), "loss", 1.5), (None, "note", "hi")]
    data = encode_part(records, [], [], "forward", 1)
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header, columns = json.loads(data[start:start + size]), bytearray(data[start + size:])
    columns = change(header, columns) or columns
    head = json.dumps(header).encode()
    return _write(tmp_path, MAGIC + struct.pack("<I", len(head)) + head + bytes(columns))


def _set_column(name: str, dtype: str, count: int):
    def change(header: dict, _: bytearray) -> None:
        header["columns"] = [[n, dtype, count] if n == name else [n, d, c]
                             for n, d, c in header["columns"]]
    return change


@pytest.mark.parametrize("change", [
    lambda h, c: c[:-3],  # torn at the end
    lambda h, c: c + b"\0",
    lambda h, c: h.update(names=[]),
    lambda h, c: h.update(loops=[]),
    lambda h, c: h.update(values=[]),
    lambda h, c: h.pop("columns") and None,
    _set_column("ctx", "O", 2),
    _set_column("ctx", "<u4", -1),
    _set_column("floats", "<f8", 99),
], ids=["torn", "trailing-byte", "name-out-of-range", "loop-out-of-range", "values-missing",
        "no-column-list", "object-dtype", "negative-count", "count-past-the-end"])
def test_a_damaged_binary_part_is_a_part_error_not_a_crash(tmp_path, change) -> None:
    path = _tampered(tmp_path, change)
    with pytest.raises(PartError, match="malformed"):
        rows_of_part(read_part(path), RowBatch(tstamp="2026-01-01 00:00:00"), {})


def test_a_part_cut_inside_its_header_is_a_part_error(tmp_path) -> None:
    data = encode_part([(None, "x", 1.0)], [], [], "forward", 1)
    with pytest.raises(PartError, match="malformed"):
        read_part(_write(tmp_path, data[:20]))


V2_PART = {  # as flor 0.3 wrote it: plain JSON lists
    "format": "flor-part/2", "source": "forward", "seq": 1,
    "contexts": [[1, 0, "epoch", 0], [2, 1, "step", 0], [3, 1, "step", 1]],
    "ctx": [2, 3, 1], "name": ["loss", "loss", "acc"], "value": [0.5, 0.25, 1],
    "args": [], "iterations": [["epoch", 0, 0.1]],
}


def test_parts_written_by_the_previous_format_still_ingest(script_repo) -> None:
    repo = script_repo("import flor\nfor e in flor.loop('epoch', range(1)):\n"
                       "    flor.log('loss', 2.0)\n")
    run_script(repo, "train.py")
    parts = next((repo / ".flor" / "runs").iterdir()) / "parts"
    (parts / "000099.json").write_text(json.dumps(V2_PART))
    with florsql.connect(repo) as conn:
        steps = conn.execute("SELECT step, loss, acc FROM history ORDER BY step").fetchall()
        count = conn.execute("SELECT count(*) FROM logs WHERE kind = 'log'").fetchone()
    assert steps == [(0, 0.5, 1), (1, 0.25, 1)]  # acc, logged per epoch, shows on each step
    assert count == (4,)  # the new-format part's epoch-level loss is kept beside them
