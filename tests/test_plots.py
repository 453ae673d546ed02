"""Loss curves: the matplotlib figure (inspected, not its pixels), PNG files, the terminal curve."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from conftest import hint
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt_cli.config import build_config
from tinygpt_cli.errors import TinyGPTError
from tinygpt_cli.runs.plots import in_bits_per_byte, loss_series, plot_runs, require_matplotlib, terminal_curve

pytest.importorskip("matplotlib")
from matplotlib.lines import Line2D  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def records(n_evals: int = 4, every: int = 50, start: float = 4.0, with_steps: bool = True) -> list[dict]:
    out = []
    for i in range(n_evals):
        it = i * every
        if with_steps and it:
            for s in range(it - every + 10, it + 1, 10):
                out.append({"iter": s, "loss": start * math.exp(-s / 100) + 1, "lr": 1e-3, "tokens_per_s": 900.0, "elapsed": s / 5})
        out.append({"iter": it, "train_loss": start * math.exp(-it / 100) + 0.9, "val_loss": start * math.exp(-it / 100) + 1.1,
                    "lr": 1e-3, "elapsed": it / 5})
    return out


def lines(picture) -> list[Line2D]:
    return [a for a in picture.figure.axes[0].get_children() if isinstance(a, Line2D) and a.get_label() and not a.get_label().startswith("_")]


def test_one_run_has_a_train_and_a_val_curve():
    picture = plot_runs([("run", records())])
    curves = lines(picture)
    assert [c.get_label() for c in curves] == ["train", "val (estimates)"]
    train, val = curves
    assert list(val.get_xdata()) == [0, 50, 100, 150]
    assert list(train.get_xdata())[:2] == [10, 20] and train.get_linestyle() == "--"


def test_several_runs_overlay_with_labels_and_time_axis():
    runs = [("n_layer=2", records()), ("n_layer=4", records(start=3.0)), ("no evals yet", records(1, with_steps=False)[:0])]
    picture = plot_runs(runs, x="time")
    curves = lines(picture)
    assert len(curves) == 4  # the run with no records adds none
    assert {c.get_label() for c in curves} == {"n_layer=2 (train)", "n_layer=2 (val)", "n_layer=4 (train)", "n_layer=4 (val)"}
    assert "wall time" in picture.figure.axes[0].get_xlabel()
    val = next(c for c in curves if c.get_label() == "n_layer=2 (val)")
    assert list(val.get_xdata()) == [0, 10, 20, 30]  # elapsed seconds
    legend = picture.figure.axes[0].get_legend()
    assert legend is not None and len(legend.get_texts()) == 4


def test_train_curve_falls_back_to_eval_estimates():
    train, val = loss_series(records(with_steps=False))
    assert [p[0] for p in train] == [p[0] for p in val] == [0, 50, 100, 150]


def test_png_file_is_valid(tmp_path):
    picture = plot_runs([("a", records()), ("b", records(start=2))])
    path = picture.save(tmp_path / "sub" / "loss.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 200
    assert not list(tmp_path.rglob("*.tmp"))
    assert picture._repr_png_() == data  # what a notebook shows inline is the file's picture


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(TinyGPTError) as e:
        require_matplotlib()
    assert "matplotlib is not installed" in e.value.message and hint(e.value) == "pip install 'tinygpt[plot]'"
    with pytest.raises(TinyGPTError):
        plot_runs([("a", records())])


# --- the terminal curve ------------------------------------------------------------------------


def test_terminal_curve_layout():
    text = terminal_curve(records(), width=40, height=10)
    rows = text.splitlines()
    assert len(rows) == 10 + 3  # plot rows, axis, iteration labels, legend
    assert rows[0].startswith("5.100 ┤") and rows[9].startswith(f"{min(r.get('loss', 9) for r in records()):.3f} ┤")
    assert "".join(rows[:10]).count("●") == 4  # one per evaluation
    assert rows[-2].strip().startswith("0") and rows[-2].endswith("150 iter")
    assert "· train" in rows[-1] and "● val" in rows[-1]
    assert all(len(r) <= 6 + 2 + 40 for r in rows)


def test_terminal_curve_ascii_and_empty():
    text = terminal_curve(records(), ascii=True)
    assert text.isascii() and "o val" in text
    assert terminal_curve([]) == ""
    assert terminal_curve([{"iter": 0, "loss": float("nan"), "elapsed": 0}]) == ""
    one = terminal_curve([{"iter": 0, "train_loss": 4.2, "val_loss": 4.2, "elapsed": 0}])
    assert "".join(one.splitlines()[:12]).count("●") == 1


record = st.fixed_dictionaries({"iter": st.integers(0, 10_000),
                                "loss": st.floats(0, 20, allow_nan=False), "elapsed": st.floats(0, 1e5)})


@settings(max_examples=60, deadline=None)
@given(st.lists(record, max_size=30), st.integers(8, 80), st.integers(3, 20))
def test_terminal_curve_any_records(recs, width, height):
    text = terminal_curve(recs, width=width, height=height)
    if not recs:
        assert text == ""
        return
    rows = text.splitlines()
    assert len(rows) == height + 3
    axis = rows[0].index("┤")
    assert all(len(r) <= axis + 1 + width for r in rows[:height])
    assert rows[height].startswith(" " * axis + "└")
    assert text.count("·") >= 2  # at least one point plus the legend


# --- the command ---------------------------------------------------------------------------------


def write_run(root: Path, name: str, n_layer: int, start: float, vocab_size: int = 65) -> Path:
    path = root / "runs" / name
    path.mkdir(parents=True)
    cfg = build_config(dict(n_layer=n_layer, n_head=2, n_embd=16, block_size=16, max_iters=150, warmup_iters=2, vocab_size=vocab_size))
    (path / "config.json").write_text(json.dumps(cfg.model_dump()))
    logged = [{**r, "val_bits_per_byte": r["val_loss"] / math.log(2) / (1 if vocab_size < 256 else 3)} if "val_loss" in r else r
              for r in records(start=start)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logged))
    (path / "run.json").write_text(json.dumps({"status": "finished", "pid": 1, "iteration": 150, "max_iters": 150}))
    return path


def test_plot_command(run_cli, tmp_path):
    write_run(tmp_path, "a", 2, 4.0)
    write_run(tmp_path, "b", 4, 3.0)
    proc = run_cli("plot", "--run", "runs/a", "--run", "b", "--png", "cmp.png", "--x", "time")  # a path, or a name under runs/
    assert proc.returncode == 0, proc.stderr
    assert "wrote cmp.png (4 curves, 2 runs)" in proc.stdout
    assert (tmp_path / "cmp.png").read_bytes().startswith(PNG_MAGIC)
    single = run_cli("plot", "--run", "a")
    assert single.returncode == 0 and (tmp_path / "runs" / "a" / "loss.png").read_bytes().startswith(PNG_MAGIC)
    term = run_cli("plot", "--run", "a", "--terminal")
    assert term.returncode == 0 and term.stdout.count("●") == 4 + 1
    missing = run_cli("plot", "--run", "nothere")
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no run folder at nothere")
    bad_x = run_cli("plot", "--run", "a", "--x", "steps")
    assert bad_x.returncode == 2 and "choose iter or time" in bad_x.stderr


def test_losses_in_bits_per_byte_use_the_logged_ratio():
    logged = [{**r, "val_bits_per_byte": r["val_loss"] / math.log(2) / 2.5} if "val_loss" in r else r for r in records()]
    converted = in_bits_per_byte(logged)
    factor = 1 / math.log(2) / 2.5  # 2.5 bytes per token
    for before, after in zip(logged, converted):
        for key in ("loss", "train_loss", "val_loss"):
            if key in before:
                assert after[key] == pytest.approx(before[key] * factor)
    assert in_bits_per_byte(records()) is None  # an older log: nothing to convert with
    picture = plot_runs([("bpe", converted)], y_label="bits per byte")
    assert picture.figure.axes[0].get_ylabel() == "bits per byte"


def test_plot_command_without_matplotlib(run_cli, tmp_path):
    write_run(tmp_path, "a", 2, 4.0)
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    proc = run_cli("plot", "--run", "a", env={"PYTHONPATH": str(fake)})
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == ["Error: matplotlib is not installed: plotting needs it", "Try: pip install 'tinygpt[plot]'"]
    term = run_cli("plot", "--run", "a", "--terminal", env={"PYTHONPATH": str(fake)})
    assert term.returncode == 0 and "● val" in term.stdout  # the terminal curve needs no matplotlib


def test_runs_with_different_vocabularies_are_plotted_in_bits_per_byte(run_cli, tmp_path):
    """Their losses per token do not compare: the plot says so and compares them per byte,
    unless asked for the losses per token."""
    write_run(tmp_path, "chars", 2, 4.0)
    write_run(tmp_path, "bpe", 2, 5.0, vocab_size=1024)
    auto = run_cli("plot", "--run", "chars", "--run", "bpe", "--terminal")
    assert auto.returncode == 0, auto.stderr
    assert "different vocabularies (65, 1,024 tokens)" in " ".join(auto.stderr.split()) and "bits per byte" in auto.stderr
    nats = run_cli("plot", "--run", "chars", "--run", "bpe", "--terminal", "--nats")
    assert nats.returncode == 0 and "vocabularies" not in nats.stderr
    assert auto.stdout != nats.stdout  # the curves themselves changed unit
    same = run_cli("plot", "--run", "chars", "--terminal")
    assert same.returncode == 0 and "vocabularies" not in same.stderr
