"""Segment columns stored as steps (engine/catalog/codec.py): exact, and small for counters."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from florsql.engine.catalog.codec import ENCODING_KEY, STEP, decode_batch, encode_batch

INT64 = np.iinfo(np.int64)


def _raw(array: pa.Array) -> np.ndarray:
    """The 64-bit values of an array, NULL slots included."""
    return np.frombuffer(array.buffers()[1], np.int64, len(array), array.offset * 8)


def _batch() -> pa.RecordBatch:
    rng = np.random.default_rng(7)
    extremes = np.array([INT64.min, INT64.max, -1, 0, INT64.max, INT64.min, 1], np.int64)
    values = np.concatenate([extremes, rng.integers(INT64.min, INT64.max, 500, np.int64),
                             np.arange(10_000, 10_500, dtype=np.int64)])
    garbage = values.copy()  # what a NULL slot holds is kept too
    mask = np.zeros(len(values), bool)
    mask[::7] = True
    return pa.record_batch({
        "counter": pa.array(values),
        "sparse": pa.Array.from_buffers(pa.int64(), len(garbage), [
            pa.array(~mask).buffers()[1], pa.py_buffer(garbage)], int(mask.sum())),
        "depth": pa.array(np.full(len(values), 2, np.int32)),
        "name": pa.array(["loss"] * len(values)).dictionary_encode(),
        "value": pa.array(rng.random(len(values)))})


def test_steps_give_back_every_bigint_bit_for_bit_null_slots_and_extremes_included() -> None:
    batch = _batch()
    stored = encode_batch(batch)
    assert [stored.schema.field(n).metadata for n in ("counter", "sparse")] == [
        {ENCODING_KEY: STEP}] * 2
    assert stored.schema.field("depth").metadata is None  # only BIGINT columns
    assert not np.array_equal(_raw(stored.column("counter")), _raw(batch.column("counter")))
    back = decode_batch(stored)
    assert back.equals(batch) and back.schema.equals(batch.schema, check_metadata=True)
    for name in ("counter", "sparse"):
        assert np.array_equal(_raw(back.column(name)), _raw(batch.column(name)))


def test_a_sliced_batch_is_stored_from_its_offset_with_its_nulls_in_place() -> None:
    batch = _batch().slice(13, 400)
    back = decode_batch(encode_batch(batch))
    assert back.equals(batch)
    assert back.column("sparse").null_count == batch.column("sparse").null_count > 0
    for name in ("counter", "sparse"):
        assert np.array_equal(_raw(back.column(name)), _raw(batch.column(name)))


def test_empty_batches_and_batches_without_steps_pass_through() -> None:
    empty = _batch().slice(0, 0)
    assert decode_batch(encode_batch(empty)).equals(empty)
    plain = pa.record_batch({"ord": pa.array([5, 6, 7], pa.int64())})
    assert decode_batch(plain) is plain  # a segment written before steps: read as it is


def test_counters_and_constants_stored_as_steps_take_a_fraction_of_their_zstd_size() -> None:
    n = 1_000_000
    batch = pa.record_batch({"ord": pa.array(np.arange(10**7, 10**7 + n, dtype=np.int64)),
                             "iter_1": pa.array(np.repeat(np.arange(10), n // 10))})

    def stored_size(rows: pa.RecordBatch) -> int:
        out = pa.BufferOutputStream()
        with pa.ipc.new_stream(out, rows.schema, options=pa.ipc.IpcWriteOptions(
                compression="zstd")) as stream:
            stream.write_batch(rows)
        return out.getvalue().size

    plain, steps = stored_size(batch), stored_size(encode_batch(batch))
    assert steps * 20 < plain, (steps, plain)
    assert decode_batch(encode_batch(batch)).equals(batch)  # its columns on a thread each


def test_all_null_columns_equal_pyarrow_s_nulls_and_share_one_buffer() -> None:
    from florsql.engine.catalog.definitions import TEXT_DICT, all_null

    for kind in (pa.int64(), pa.int32(), TEXT_DICT, pa.string(), pa.timestamp("us")):
        for size in (0, 1, 7, 100_003):
            made = all_null(kind, size)
            made.validate(full=True)
            assert made.equals(pa.nulls(size, kind)) and made.null_count == size
    first, second = all_null(pa.int64(), 1000), all_null(pa.string(), 1000)
    assert first.buffers()[1].address == second.buffers()[1].address  # nothing new allocated
