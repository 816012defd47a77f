"""Completion: the pure `suggest` function over text, and its prompt_toolkit adapter."""

from __future__ import annotations

from pathlib import Path

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from florsql.commands import COMMANDS, command_specs
from florsql.completion import SqlCompleter, suggest, tables_in

TABLES = {
    "runs": ["projid", "runid", "tstamp", "vid", "status"],
    "logs": ["tstamp", "ctx_id", "value_name", "value_num"],
    "checkpoints": ["tstamp", "loop_name", "bytes"],
}
HISTORY = ["projid", "runid", "tstamp", "epoch", "lr", "accuracy", "val/loss", "loss"]
QUERIES = ["best_epoch", "learning_curve"]


def texts(before: str, after: str = "") -> list[str]:
    found = suggest(before, TABLES, HISTORY, QUERIES, text_after_cursor=after,
                    commands=command_specs())
    return [s.text for s in found]


def test_after_from_the_tables_and_history_are_offered() -> None:
    assert texts("SELECT * FROM ") == ["history", "runs", "logs", "checkpoints"]


def test_after_from_a_prefix_narrows_the_tables() -> None:
    assert texts("select * from hi") == ["history"]


def test_after_join_and_after_a_comma_in_from_tables_are_offered() -> None:
    assert "checkpoints" in texts("SELECT * FROM runs r JOIN ch")
    assert texts("SELECT * FROM runs, lo") == ["logs"]


def test_a_logged_name_is_offered_after_select_before_any_from() -> None:
    assert texts("SELECT acc") == ["accuracy"]


def test_columns_come_from_the_tables_named_later_in_the_statement() -> None:
    offered = texts("SELECT ", " FROM runs")
    assert offered == TABLES["runs"]


def test_where_offers_history_columns_including_every_logged_name() -> None:
    offered = texts("SELECT runid FROM history WHERE ")
    assert {"epoch", "lr", "accuracy", "loss"} <= set(offered)
    assert "value_name" not in offered


def test_group_by_order_by_having_and_on_offer_columns() -> None:
    assert texts("SELECT count(*) FROM logs GROUP BY value_") == ["value_name", "value_num"]
    assert texts("SELECT * FROM runs ORDER BY stat") == ["status"]
    assert texts("SELECT runid FROM history GROUP BY 1 HAVING max(ac") == ["accuracy"]
    assert "bytes" in texts("SELECT * FROM runs JOIN checkpoints ON runs.tstamp = ")


def test_a_comma_in_the_select_list_offers_columns() -> None:
    assert texts("SELECT runid, stat", " FROM runs") == ["status"]


def test_an_alias_qualifier_offers_only_that_tables_columns() -> None:
    offered = texts("SELECT c.", " FROM runs r JOIN checkpoints AS c ON r.tstamp = c.tstamp")
    assert offered == TABLES["checkpoints"]


def test_tables_in_maps_aliases_and_names_to_tables() -> None:
    found = tables_in("SELECT * FROM runs r, history JOIN logs AS l ON r.tstamp = l.tstamp")
    assert found == {"runs": "runs", "r": "runs", "logs": "logs", "l": "logs",
                     "history": "history"}


def test_only_the_statement_under_the_cursor_decides_the_columns() -> None:
    assert texts("SELECT * FROM logs; SELECT ", " FROM runs; SELECT 1 FROM checkpoints") == \
        TABLES["runs"]


def test_a_string_literal_holding_from_does_not_change_the_context() -> None:
    assert "status" in texts("SELECT * FROM runs WHERE runid = 'from x' AND st")


def test_keywords_are_offered_after_a_column_and_follow_the_typed_case() -> None:
    assert texts("SELECT runid FR") == ["FROM"]
    assert texts("select runid fr") == ["from"]


def test_prefix_matches_come_before_substring_matches() -> None:
    assert texts("SELECT * FROM history WHERE loss") == ["loss", '"val/loss"']


def test_a_name_that_is_not_a_plain_identifier_is_offered_quoted() -> None:
    assert '"val/loss"' in texts("SELECT val")


def test_the_suggestion_replaces_exactly_the_typed_word() -> None:
    [only] = suggest("SELECT acc", TABLES, HISTORY, QUERIES)
    assert (only.text, only.start, only.kind) == ("accuracy", -3, "column")


def test_a_leading_dot_offers_every_dot_command() -> None:
    assert texts(".") == list(COMMANDS)
    assert texts(".sch") == [".schema"]


def test_dot_command_arguments_are_completed_by_kind() -> None:
    assert texts(".run le") == ["learning_curve"]
    assert texts(".mode c") == ["csv"]
    assert texts(".schema ch") == ["checkpoints"]
    assert texts(".schema hist") == ["history"]
    assert texts(".timer o") == ["on", "off"]


def test_nothing_is_offered_for_an_unknown_command_or_a_second_argument() -> None:
    assert texts(".nosuch ") == []
    assert texts(".mode csv j") == []


def test_the_adapter_yields_completions_with_position_and_kind() -> None:
    completer = SqlCompleter(lambda: (TABLES, HISTORY, QUERIES), command_specs())
    found = list(completer.get_completions(Document("SELECT lr, acc"), CompleteEvent()))
    assert [(c.text, c.start_position, c.display_meta_text) for c in found] == \
        [("accuracy", -3, "column")]


def test_the_adapter_completes_file_paths_after_read(tmp_path: Path) -> None:
    (tmp_path / "report.sql").write_text("SELECT 1;")
    completer = SqlCompleter(lambda: (TABLES, HISTORY, QUERIES), command_specs())
    document = Document(f".read {tmp_path}/rep")
    found = [c.text for c in completer.get_completions(document, CompleteEvent())]
    assert found == ["ort.sql"]
