"""`cli.common.render_table`, the one table of the CLI: plain aligned columns that scripts and
the e2e tests parse (header words, column offsets), cells shown as given, never wrapped."""

from __future__ import annotations

from erel_sync.cli.common import render_table


def test_columns_two_spaces_apart_trailing_blanks_stripped() -> None:
    text = render_table(["HOST", "STATE", "ERROR"], [["web-1", "Ready", ""], ["b", "Failed", "x"]])
    assert text.splitlines() == [
        "HOST   STATE   ERROR",
        "web-1  Ready",
        "b      Failed  x",
    ]


def test_a_column_starts_at_its_header_and_long_cells_are_whole() -> None:
    long = "ArtifactUnavailable: " + "y" * 300
    header, row = render_table(["HOST", "ERROR", "AGENT"], [["web-1", long, "0.1.0"]]).splitlines()
    assert row[header.index("ERROR") :].startswith("ArtifactUnavailable: ")
    assert row.endswith(" 0.1.0") and long in row


def test_cells_are_text_not_markup_and_plain_output_has_no_escapes() -> None:
    cells = ["[red]x[/red]", ":smile:", "a [b]"]
    text = render_table(["A", "B", "C"], [cells])
    assert text.splitlines()[1].split("  ") == cells
    assert "\x1b" not in text
    assert "\x1b[1m" in render_table(["A"], [["x"]], styled=True)


def test_no_rows_is_the_header_alone() -> None:
    assert render_table(["HOST", "STATE"], []) == "HOST  STATE"
