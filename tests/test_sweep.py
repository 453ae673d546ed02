"""Sweeps: grid flags, cell names, a tiny 2x2 grid end to end, and resume after a stop."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import hint, make_text, signal_at_step, tiny_cli_flags

from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.errors import ConfigError, TrainingStopped, UsageError
from tinygpt_cli.params import param_report
from tinygpt_cli.runs.sweep import cell_name, parse_grid_args, plan_sweep

GRID = ["--n-layer", "1,2", "--learning-rate", "1e-3,3e-3"]


def tiny_cells(data_dir: Path, preset: bool = True) -> list[str]:
    """The shared tiny settings, but for the grid's axes, as a sweep's flags."""
    return tiny_cli_flags(data_dir, preset, n_layer=None, learning_rate=None, max_iters=20, batch_size=4)
CELLS = ["n_layer=1,learning_rate=0.001", "n_layer=1,learning_rate=0.003",
         "n_layer=2,learning_rate=0.001", "n_layer=2,learning_rate=0.003"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweepdata")
    (root / "text.txt").write_text(make_text(20_000), encoding="utf-8")
    prepare_text(root / "text.txt", root / "data", "text", 0.1)
    return root / "data"


# --- parsing and planning ----------------------------------------------------------------------


def test_parse_grid_args_forms():
    grid = parse_grid_args(["--n-layer", "2,4,6", "--learning-rate=1e-3,3e-3", "--bias", "--no-compile", "--lr-decay", "cosine"])
    assert grid == {"n_layer": ["2", "4", "6"], "learning_rate": ["1e-3", "3e-3"], "bias": ["true"], "compile": ["false"],
                    "lr_decay": ["cosine"]}


@pytest.mark.parametrize("args, message", [
    (["--n-layr", "2,4"], "unknown flag --n-layr"),
    (["--vocab-size", "10,20"], "unknown flag --vocab-size"),  # set by the dataset, not sweepable
    (["--n-layer"], "--n-layer needs a value"),
    (["--n-layer", "2,,4"], "empty value"),
    (["--n-layer", "2", "--n-layer", "4"], "given twice"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_parse_grid_args_errors(args, message):
    with pytest.raises(UsageError) as e:
        parse_grid_args(args)
    assert message in e.value.message
    if "unknown flag" in message:
        assert "--n-layer" in hint(e.value) and "--learning-rate" in hint(e.value)


def test_plan_expands_the_grid_with_typed_values(tmp_path):
    plan = plan_sweep(["--n-layer", "1,2", "--learning-rate", "1e-3,0.001,3e-3", "--max-iters", "20", "--warmup-iters", "2"],
                      out=tmp_path / "sw")
    assert plan.axes == {"n_layer": [1, 2], "learning_rate": [0.001, 0.003]}  # 1e-3 and 0.001 are one value
    assert plan.fixed == {"max_iters": 20, "warmup_iters": 2}
    assert [c.name for c in plan.cells] == CELLS
    assert [c.path for c in plan.cells] == [tmp_path / "sw" / n for n in CELLS]
    last = plan.cells[-1].config
    assert (last.model.n_layer, last.train.learning_rate, last.train.max_iters) == (2, 3e-3, 20)
    assert last.model.n_embd == 384  # the rest from the default preset
    assert not (tmp_path / "sw").exists()  # planning writes nothing


def test_plan_errors():
    with pytest.raises(UsageError, match="nothing to sweep"):
        plan_sweep(["--n-layer", "2", "--max-iters", "20"])
    with pytest.raises(UsageError, match="--n-layer: 'two' is not valid"):
        plan_sweep(["--n-layer", "two,4"])
    with pytest.raises(ConfigError) as e:  # every cell is checked before anything runs
        plan_sweep(["--n-embd", "64,66", "--n-head", "4"])
    assert any("n_embd (66) must be divisible by n_head (4)" in p and "cell n_embd=66" in p for p in e.value.problems)


def test_cell_names_are_safe():
    assert cell_name({"n_layer": 2, "learning_rate": 0.001}) == "n_layer=2,learning_rate=0.001"
    assert cell_name({"data_dir": "/some/where/tiny shakespeare"}) == "data_dir=tiny_shakespeare"
    assert cell_name({"lr_decay": "a/b\\c:d"}) == "lr_decay=a_b_c_d"
    assert len(cell_name({"data_dir": "x" * 500})) <= 120


def test_a_failing_cell_does_not_stop_the_sweep(tmp_path, monkeypatch):
    import tinygpt_cli.runs.sweep as sweep_mod
    import tinygpt_cli.lifecycle as lifecycle
    from tinygpt_cli.errors import TinyGPTError

    plan = plan_sweep(["--n-layer", "1,2,3", "--max-iters", "20", "--warmup-iters", "2"], out=tmp_path / "sw")
    monkeypatch.setattr(sweep_mod, "prepared_configs", lambda plan: [c.config for c in plan.cells])  # no dataset needed
    trained = []

    def fake_train_new(config, path, reporter=None, overwrite=False, threads=None):
        if config.model.n_layer == 2:
            raise TinyGPTError("the loss became nan at iteration 7")
        trained.append(config.model.n_layer)

    monkeypatch.setattr(lifecycle, "train_new", fake_train_new)
    result = sweep_mod.run_sweep(plan)
    assert trained == [1, 3]
    assert [(c.outcome, c.error) for c in result.cells] == [("trained", None), ("failed", "the loss became nan at iteration 7"),
                                                           ("trained", None)]
    assert [c.cell.name for c in result.failed] == ["n_layer=2"]


# --- running ----------------------------------------------------------------------------------


def mtimes(folder: Path) -> dict[str, int]:
    return {c: (folder / c / "last.safetensors").stat().st_mtime_ns for c in CELLS}


@pytest.mark.slow
def test_init_from_is_refused_with_the_train_command_to_use(tmp_path):
    with pytest.raises(UsageError) as e:
        plan_sweep(["--learning-rate", "1e-3,3e-3", "--init-from", "runs/cpu"], out=tmp_path / "sw")
    assert "--init-from is for train" in e.value.message and "train --init-from runs/cpu" in hint(e.value)


def test_sweep_2x2_end_to_end_and_rerun_skips(run_cli, tmp_path, data_dir):
    args = ["sweep", *GRID, *tiny_cells(data_dir), "--log", "tensorboard", "--out", "sw"]
    proc = run_cli(*args, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sw = tmp_path / "sw"
    for cell in CELLS:
        status = json.loads((sw / cell / "run.json").read_text())
        assert (status["status"], status["iteration"]) == ("finished", 20)
        assert len(list((sw / cell).glob("events.out.tfevents.*"))) == 1  # `tensorboard --logdir sw` shows every cell
    assert (sw / "sweep.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads((sw / "sweep.json").read_text())["axes"] == {"n_layer": [1, 2], "learning_rate": [0.001, 0.003]}
    assert proc.stdout.count(": training") == 4
    assert "best first" in proc.stdout and "n_layer" in proc.stdout and "learning_rate" in proc.stdout
    before = mtimes(sw)

    again = run_cli(*args, "--json", timeout=180)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("skipped (finished)") == 4
    result = json.loads(again.stdout)
    assert sorted(r["name"] for r in result["runs"]) == sorted(CELLS)
    assert {r["outcome"] for r in result["runs"]} == {"skipped"}
    vals = [r["best_val_loss"] for r in result["runs"]]
    assert vals == sorted(vals)  # best first
    assert mtimes(sw) == before  # finished cells were not touched


@pytest.mark.slow
def test_stopped_sweep_resumes_where_it_left_off(tmp_path, data_dir):
    from tinygpt_cli.runs.sweep import project, run_sweep
    from tinygpt_cli.lifecycle import TrainingReporter

    args = [*GRID, *tiny_cells(data_dir, preset=False)]
    plan = plan_sweep(args, preset="cpu", out=tmp_path / "sw")

    dry = project(plan)  # the dry run: parameters, timing, nothing written
    assert [r["action"] for r in dry] == ["train"] * 4
    vocab = json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    for row, cell in zip(dry, plan.cells):  # parameters of the model fitted to the dataset's vocabulary
        assert row["n_params"] == param_report(cell.config.model.model_copy(update={"vocab_size": vocab})).total
    assert dry[0]["n_params"] < dry[2]["n_params"]
    assert all(r["ms_per_iter"] > 0 and r["projected_seconds"] > 0 for r in dry)
    assert not (tmp_path / "sw").exists()

    calls = []
    reporters = iter([TrainingReporter(), signal_at_step(10, signal.SIGINT)])  # Ctrl-C in the second cell
    with pytest.raises(TrainingStopped):
        run_sweep(plan, lambda cell: next(reporters), lambda i, cell, action: calls.append((cell.name, action)))
    assert calls == [(CELLS[0], "train"), (CELLS[1], "train")]
    stopped = json.loads((tmp_path / "sw" / CELLS[1] / "run.json").read_text())
    assert (stopped["status"], stopped["iteration"]) == ("stopped", 10)
    first = (tmp_path / "sw" / CELLS[0] / "last.safetensors").stat().st_mtime_ns

    plan = plan_sweep(args, preset="cpu", out=tmp_path / "sw")
    assert [r["action"] for r in project(plan, time_steps=lambda c: 1.0)][:3] == ["skip", "resume", "train"]
    calls.clear()
    result = run_sweep(plan, None, lambda i, cell, action: calls.append(action))
    assert calls == ["skip", "resume", "train", "train"]
    assert [c.outcome for c in result.cells] == ["skipped", "resumed", "trained", "trained"]
    assert (tmp_path / "sw" / CELLS[0] / "last.safetensors").stat().st_mtime_ns == first
    resumed = json.loads((tmp_path / "sw" / CELLS[1] / "run.json").read_text())
    assert (resumed["status"], resumed["iteration"]) == ("finished", 20)
    metrics = [json.loads(line) for line in (tmp_path / "sw" / CELLS[1] / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in metrics if "val_loss" in r] == [0, 10, 20]  # no evaluation logged twice

    wider = [("64" if prev == "--n-embd" else a) for prev, a in zip([None, *args], args)]
    changed = plan_sweep(wider, preset="cpu", out=tmp_path / "sw")  # another shape into the same folder
    with pytest.raises(UsageError, match="was trained with other --n-embd"):
        run_sweep(changed)


@pytest.mark.parametrize("preset, args, words", [
    ("cpu", ["--learning-rate", "1e-3,3e-3"], "--learning-rate under --optimizer muon"),
    ("cpu-classic", ["--muon-lr", "0.01,0.02"], "--muon-lr under --optimizer adamw has no effect"),
    ("cpu-classic", ["--learning-rate", "1e-3,3e-3"], None),
    ("cpu", ["--muon-lr", "0.01,0.02"], None),
])
def test_a_swept_setting_that_the_optimiser_ignores_is_warned_about(tmp_path, preset, args, words):
    warnings = plan_sweep(args, preset=preset, out=tmp_path / "sweep").warnings
    if words is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and words in warnings[0]


def test_the_latest_run_is_found_in_a_sweep_folder_too(tmp_path, tiny_run):
    """`generate` without --run reads the most recent run, runs/NAME or runs/SWEEP/NAME."""
    import os
    import shutil

    from tinygpt_cli.rundir import latest_run

    runs = tmp_path / "runs"
    older = Path(shutil.copytree(tiny_run, runs / "older"))
    newer = Path(shutil.copytree(tiny_run, runs / "depth" / "n_layer=2"))
    for path, when in ((older, 1_000_000_000), (newer, 1_100_000_000)):
        for checkpoint in path.glob("*.safetensors"):
            os.utime(checkpoint, (when, when))
    assert latest_run(runs).path == newer
