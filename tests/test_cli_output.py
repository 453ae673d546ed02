"""Output for people: whole numbers, times and lessons at any terminal width, durations as a
person says them."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize("seconds, said", [(45, "45 s"), (720, "12 min"), (479.2 * 60, "8.0 hours"), (5 * 86400, "5.0 days")])
def test_a_projected_duration_reads_as_a_person_says_it(seconds, said):
    from tinygpt_cli.cli.console import rough_duration

    assert rough_duration(seconds) == said


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_live_training_line_keeps_its_time_left_whole(width):
    import io

    from rich.console import Console
    from rich.progress import Progress

    from tinygpt_cli.cli.reporting import live_columns

    screen = io.StringIO()
    console = Console(file=screen, width=width, force_terminal=True, color_system=None)
    with Progress(*live_columns(width), console=console, transient=False) as bar:
        bar.add_task("train", total=5000, completed=1200, loss="1.2345", val="1.4567", lr="3.00e-04", tps="21,000")
    shown = [line for line in screen.getvalue().splitlines() if "iter" in line][-1]
    assert "ETA" in shown and "…" not in shown and "-:--:--" in shown and "21,000 tok/s" in shown


@pytest.mark.parametrize("width", [60, 80, 200])
def test_an_eval_line_folds_between_its_parts_never_inside_one(width):
    from tinygpt_cli.cli.reporting import fit_line

    parts = ["eval   1200", "train 1.4214", "val 1.6771 (2.419 bits/byte)", "best 1.6489 *", "elapsed 0:17"]
    text = fit_line(parts, width)
    assert all(len(line) <= width for line in text.splitlines())
    assert all(part in text for part in parts)  # each part whole, on one line


def test_the_attention_heatmap_rows_line_up_whatever_the_tokens_length(monkeypatch):
    """A BPE token is one to many characters: the rows' cells still start in one column."""
    import io

    import numpy as np
    from rich.console import Console

    import tinygpt_cli.cli.inside_cmds as inside_cmds

    screen = io.StringIO()
    monkeypatch.setattr(inside_cmds, "out", Console(file=screen, width=80, color_system=None))
    labels = ["r", "st", "␣", "Citizen", "it", "␣w", "e", ":"] * 2
    grid = np.tril(np.ones((len(labels), len(labels)))) / np.arange(1, len(labels) + 1)[:, None]
    inside_cmds._heatmap(grid, labels, "layer 0, head 0")
    rows = [line for line in screen.getvalue().splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == len(labels)
    positions = {re.match(r"\s*\d+", line).end() for line in rows}  # where each row's position number ends
    tokens = {re.match(r"\s*\d+ ", line).end() for line in rows}  # where its token begins
    cells = {re.match(r"\s*\d+ (\S+)\s+", line).end() for line in rows}  # where its first cell begins
    assert len(positions) == len(tokens) == len(cells) == 1
