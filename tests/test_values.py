"""What `flor.log` can record (values.py), and how names are checked (recorder.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import florsql
from conftest import run_script
from flor import FlorError, FlorNameError
from flor.recorder import Recorder
from flor.values import (
    MAX_JSON_CHARS,
    is_unsupported,
    number_of,
    refusal_reason,
    to_recordable,
    type_name,
)


@pytest.mark.parametrize("value", [0, -7, 2.5, True, False, "loss", "", None])
def test_plain_scalars_are_recorded_as_themselves(value: object) -> None:
    stored = to_recordable(value)
    assert stored == value and type(stored) is type(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.float32(1.5), 1.5),
        (np.float64(0.25), 0.25),
        (np.int64(3), 3),
        (np.bool_(True), True),
        (np.array(2.5), 2.5),
    ],
)
def test_numpy_scalars_and_0d_arrays_become_python_scalars(value: object, expected: object) -> None:
    stored = to_recordable(value)
    # np.float64 subclasses float, so it may come back as itself; it must act as a Python number.
    assert stored == expected and isinstance(stored, type(expected))
    assert json.loads(json.dumps(stored)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(torch.tensor(0.5), 0.5), (torch.tensor(3), 3), (torch.tensor(True), True)],
)
def test_0d_torch_tensors_become_python_scalars(value: object, expected: object) -> None:
    stored = to_recordable(value)
    assert stored == expected and type(stored) is type(expected)


def test_a_0d_tensor_that_requires_grad_is_recorded_as_its_value() -> None:
    loss = (torch.ones(3, requires_grad=True) * 2).mean()
    assert to_recordable(loss) == 2.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(torch.tensor([1.5]), [1.5]), (torch.tensor([[1.5]]), [[1.5]]), (np.array([1.5]), [1.5]),
     (torch.ones(3), [1.0, 1.0, 1.0]), (np.zeros((2, 2)), [[0.0, 0.0], [0.0, 0.0]])],
    ids=["torch-1d-1elem", "torch-2d-1elem", "numpy-1d-1elem", "torch-3elem", "numpy-2x2"],
)
def test_tensors_and_arrays_with_dimensions_become_nested_lists_not_scalars(
        value: object, expected: list) -> None:
    # values.py documents only 0-d tensors and numpy scalars as becoming scalars via .item().
    assert to_recordable(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.array([1, -2], dtype=np.int8), [1, -2]),
        (np.array([3], dtype=np.uint64), [3]),
        (np.array([True, False]), [True, False]),
        (np.array([0.1], dtype=np.float32), [float(np.float32(0.1))]),
        (np.array([0.1], dtype=np.float16), [float(np.float16(0.1))]),
        (np.array(["a", "bc"]), ["a", "bc"]),
        (np.arange(6).reshape(2, 3).T, [[0, 3], [1, 4], [2, 5]]),  # not contiguous
        (np.zeros((0, 3)), []),
        (np.array([np.nan, np.inf]), [math.nan, math.inf]),
        (torch.tensor([1.5, 2.5], dtype=torch.bfloat16), [1.5, 2.5]),
        (torch.tensor([[1, 2], [3, 4]], dtype=torch.int64), [[1, 2], [3, 4]]),
        (torch.tensor([True]), [True]),
        (torch.ones(2, requires_grad=True) * 2, [2.0, 2.0]),
        (torch.arange(4.0)[::2], [0.0, 2.0]),
    ],
    ids=["int8", "uint64", "bool", "float32", "float16", "str", "transposed", "empty", "nan-inf",
         "torch-bfloat16", "torch-int64", "torch-bool", "torch-requires-grad", "torch-strided"],
)
def test_arrays_and_tensors_of_every_json_kind_become_exact_lists(
        value: object, expected: list) -> None:
    # as JSON text: NaN equals NaN there, and 1 differs from 1.0 and from true
    assert json.dumps(to_recordable(value)) == json.dumps(expected)


@pytest.mark.parametrize(
    "value",
    [np.array([1 + 2j]), np.array([1], dtype="datetime64[s]"), np.array([object()]),
     np.array([b"x"]), torch.tensor([1 + 2j]), torch.eye(3).to_sparse()],
    ids=["complex", "datetime", "object", "bytes", "torch-complex", "torch-sparse"],
)
def test_arrays_of_kinds_json_cannot_hold_are_unsupported(value: object) -> None:
    assert is_unsupported(to_recordable(value)) and refusal_reason(to_recordable(value)) is None


@pytest.mark.parametrize("make", [np.zeros, torch.zeros], ids=["numpy", "torch"])
def test_arrays_over_the_element_limit_are_refused_with_the_limit_and_the_fix(
        make: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    assert to_recordable(make((100, 100))) == [[0.0] * 100] * 100  # 10,000: at the limit
    refused = to_recordable(make((101, 100)))
    reason = refusal_reason(refused)
    assert is_unsupported(refused) and reason is not None and "\n" not in reason
    assert "101x100" in reason and "10,100 elements" in reason and "limit of 10,000" in reason
    assert "x.mean()" in reason and "FLOR_MAX_LOG_ELEMENTS" in reason
    monkeypatch.setenv("FLOR_MAX_LOG_ELEMENTS", "20000")
    assert len(to_recordable(make((101, 100)))) == 101
    monkeypatch.setenv("FLOR_MAX_LOG_ELEMENTS", "lots")
    with pytest.raises(FlorError, match="FLOR_MAX_LOG_ELEMENTS='lots'"):
        to_recordable(make(3))


def test_a_logged_array_is_a_snapshot_that_in_place_changes_do_not_reach() -> None:
    arr, ten = np.array([1.0, 2.0]), torch.tensor([[1, 2]])
    stored_arr, stored_ten = to_recordable(arr), to_recordable(ten)
    arr += 10
    ten.mul_(-1)
    assert stored_arr == [1.0, 2.0] and stored_ten == [[1, 2]]


def test_lists_tuples_and_dicts_are_recorded_as_json_values() -> None:
    assert to_recordable([1, 2.5, "a", None, True]) == [1, 2.5, "a", None, True]
    assert to_recordable((1, 2)) == [1, 2]
    assert to_recordable({"lr": 0.1, "layers": [8, 8]}) == {"lr": 0.1, "layers": [8, 8]}


def test_tensors_and_numpy_values_inside_a_list_are_converted() -> None:
    assert to_recordable([torch.tensor(1.0), np.float32(2.0)]) == [1.0, 2.0]
    assert to_recordable({"w": torch.tensor([1, 2]), "b": np.array([0.5])}) == {
        "w": [1, 2], "b": [0.5]}


def test_a_recorded_list_or_dict_is_a_snapshot_that_later_mutation_does_not_change() -> None:
    config = {"layers": [8, 8], "opt": {"lr": 0.1}}
    stored = to_recordable(config)
    config["layers"].append(16)
    config["opt"]["lr"] = 99
    config["new"] = 1
    assert stored == {"layers": [8, 8], "opt": {"lr": 0.1}}
    history = [1, 2]
    stored_list = to_recordable(history)
    history.append(3)
    assert stored_list == [1, 2]


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, b"bytes", [object()], {"model": object()}, ["x" * (MAX_JSON_CHARS + 10)]],
    ids=["object", "set", "bytes", "list-of-object", "dict-of-object", "too-large-list"],
)
def test_values_flor_cannot_record_are_unsupported(value: object) -> None:
    assert is_unsupported(to_recordable(value))


def test_a_self_referencing_list_is_unsupported_rather_than_an_error() -> None:
    loop: list = [1]
    loop.append(loop)
    assert is_unsupported(to_recordable(loop))


def test_supported_values_are_never_mistaken_for_unsupported() -> None:
    for value in (None, 0, "", [], {}, torch.tensor(0.0)):
        assert not is_unsupported(to_recordable(value))


def test_type_names_and_numbers_for_the_catalog_columns() -> None:
    assert [type_name(v) for v in (None, True, 1, 1.5, "s", [1])] == [
        "null", "bool", "int", "float", "str", "json"]
    assert number_of(True) == 1.0 and number_of(3) == 3.0 and number_of("3") is None


def test_an_int_too_large_for_a_double_gets_an_infinite_number_column() -> None:
    assert number_of(10**400) == math.inf and number_of(-(10**400)) == -math.inf


# --- names (Recorder.admit_name) ---------------------------------------------------------------


@pytest.fixture
def recorder(tmp_path: Path):
    rec = Recorder(tmp_path / "run", "forward")
    yield rec
    rec.close()


def test_names_that_differ_only_by_case_raise_a_clear_flor_name_error(recorder: Recorder) -> None:
    recorder.admit_name("loss")
    recorder.admit_name("loss")  # the same spelling again is fine
    with pytest.raises(FlorNameError) as info:
        recorder.admit_name("Loss")
    message = str(info.value)
    assert "'Loss'" in message and "'loss'" in message and "case" in message


@pytest.mark.parametrize("name", ["", "   ", 3])
def test_empty_or_non_string_names_are_refused(recorder: Recorder, name: object) -> None:
    with pytest.raises(FlorNameError, match="non-empty string"):
        recorder.admit_name(name)  # type: ignore[arg-type]


# --- through real scripts ----------------------------------------------------------------------


def _logs(repo: Path) -> list[tuple]:
    with florsql.connect(repo) as conn:
        return conn.execute(
            "SELECT value_name, value_type, value_num, value_text FROM logs "
            "WHERE kind = 'log' ORDER BY ord").fetchall()


def _statuses(repo: Path) -> list[str]:
    with florsql.connect(repo) as conn:
        return [s for (s,) in conn.execute("SELECT status FROM runs").fetchall()]


UNSUPPORTED_SCRIPT = """\
import flor
obj = object()
cfg = {"layers": [8, 8]}
assert flor.log("cfg", cfg) is cfg
cfg["layers"].append(16)
for epoch in flor.loop("epoch", range(3)):
    assert flor.log("model", obj) is obj
    flor.log("loss", 1.0 / (epoch + 1))
print("done")
"""


def test_an_unsupported_value_warns_once_and_the_run_keeps_its_other_records(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo(UNSUPPORTED_SCRIPT)
    proc = run_script(repo, "train.py")
    assert "done" in proc.stdout
    assert proc.stderr.count("FlorWarning") == 1
    assert "flor.log('model'): cannot record a object" in proc.stderr
    assert "train.py:7: FlorWarning" in proc.stderr  # points at the script's own call
    rows = _logs(repo)
    assert [r[0] for r in rows] == ["cfg", "loss", "loss", "loss"]
    assert json.loads(rows[0][3]) == {"layers": [8, 8]} and rows[0][1] == "json"
    assert [r[2] for r in rows[1:]] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert _statuses(repo) == ["finished"]


def test_logging_names_that_differ_only_by_case_fails_the_script_clearly(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo('import flor\nflor.log("acc", 0.5)\nflor.log("ACC", 0.6)\n')
    proc = run_script(repo, "train.py", check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "FlorNameError" in last and "'ACC'" in last and "'acc'" in last
    assert [r[:3] for r in _logs(repo)] == [("acc", "float", 0.5)]
    assert _statuses(repo) == ["failed"]


def test_a_logged_identity_name_is_kept_apart_as_name_value(
        script_repo: Callable[[str], Path]) -> None:
    import flor
    from flor import history as flor_history

    # FlorDB accepts such names, so its scripts must run unchanged; history renames them.
    repo = script_repo('import flor\nflor.log("runid", 1)\nflor.log("vid", "v")\n')
    run_script(repo, "train.py", "--flor", "named")
    with florsql.connect(repo) as conn:
        rows = conn.execute("SELECT runid, runid_value, vid_value FROM history").fetchall()
    assert rows == [("named", 1, "v")]
    try:
        frame = flor.dataframe("runid", path=repo)
    finally:
        flor_history._release_all()
    assert frame["runid_value"].tolist() == [1] and frame["runid"].tolist() == ["named"]


def test_a_huge_int_is_recorded_and_the_project_stays_queryable(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo('import flor\nflor.log("big", 10**400)\nflor.log("ok", 1)\n')
    run_script(repo, "train.py")
    rows = {name: (vtype, num, text) for name, vtype, num, text in _logs(repo)}
    assert rows["ok"] == ("int", 1.0, "1")
    assert rows["big"][:2] == ("int", math.inf) and rows["big"][2] == str(10**400)


ARRAY_SCRIPT = """\
import numpy as np
import torch
import flor

probs = np.zeros(3)
for epoch in flor.loop("epoch", range(3)):
    probs[:] = [epoch, epoch + 0.5, -1.0]
    flor.log("probs", probs)
    probs *= 100  # changed in place right after the call: the record keeps the logged value
    flor.log("grid", torch.arange(4, dtype=torch.int64).reshape(2, 2) + epoch)
    flor.log("weights", np.ones((200, 100)))  # 20,000 elements: refused with one warning
    flor.log("loss", 1.0 / (epoch + 1))
print("done")
"""


def test_logged_arrays_land_as_json_values_queryable_from_sql(
    script_repo: Callable[[str], Path],
) -> None:
    repo = script_repo(ARRAY_SCRIPT)
    proc = run_script(repo, "train.py")
    assert "done" in proc.stdout
    warned = [line for line in proc.stderr.splitlines() if "FlorWarning" in line]
    assert len(warned) == 1 and "train.py:11: FlorWarning" in warned[0]
    assert "flor.log('weights'): a 200x100 ndarray has 20,000 elements, over the limit of " \
           "10,000; log a summary such as x.mean()" in warned[0]
    assert "FLOR_MAX_LOG_ELEMENTS" in warned[0]
    with florsql.connect(repo) as conn:
        rows = conn.execute(
            "SELECT epoch, probs, CAST(probs AS DOUBLE[]), json_extract(grid, '$[1][0]')::INT, "
            "loss FROM history ORDER BY epoch").fetchall()
        types = dict(conn.execute("SELECT value_name, value_type FROM logs").fetchall())
        names = {n for (n,) in conn.execute("SELECT name FROM names").fetchall()}
    assert [r[0] for r in rows] == [0, 1, 2]
    assert [json.loads(r[1]) for r in rows] == [[e, e + 0.5, -1.0] for e in range(3)]
    assert [r[2] for r in rows] == [[e, e + 0.5, -1.0] for e in range(3)]
    assert [r[3] for r in rows] == [2 + e for e in range(3)]
    assert [r[4] for r in rows] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert types == {"probs": "json", "grid": "json", "loss": "float"}
    assert "weights" not in names


def test_the_element_limit_can_be_raised_for_a_run(script_repo: Callable[[str], Path]) -> None:
    repo = script_repo("import numpy as np, flor\nflor.log('w', np.arange(20_000))\n")
    proc = run_script(repo, "train.py", env={"FLOR_MAX_LOG_ELEMENTS": "20000"})
    assert "FlorWarning" not in proc.stderr
    with florsql.connect(repo) as conn:
        text, = conn.execute("SELECT w FROM history").fetchone()
    assert json.loads(text) == list(range(20_000))
