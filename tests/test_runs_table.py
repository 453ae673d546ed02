"""Run summaries and `tinygpt runs` on synthetic run folders (no training, no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, tiny_cli_flags

from tinygpt_cli.config import build_config
from tinygpt_cli.errors import UsageError
from tinygpt_cli.params import param_report
from tinygpt_cli.runs.table import (
    RunSummary,
    differing_fields,
    discover_runs,
    label_for,
    read_summary,
    sort_runs,
    summarize_runs,
)

BASE = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=100, warmup_iters=2, learning_rate=1e-3)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_run(root: Path, name: str, status: dict | None, val_losses=(3.0, 2.5), **overrides) -> Path:
    """A run folder as training leaves it: config.json, metrics.jsonl and (unless None) run.json."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(build_config({**BASE, **overrides}).model_dump()))
    records = []
    for i, val in enumerate(val_losses):
        it = i * 50
        if it:
            records += [{"iter": it - 10, "loss": val + 0.1, "lr": 1e-3, "tokens_per_s": 1000.0 * i, "elapsed": it / 10 - 1},
                        {"iter": it, "loss": val + 0.05, "lr": 1e-3, "tokens_per_s": 1000.0 * i, "elapsed": it / 10}]
        records.append({"iter": it, "train_loss": val - 0.1, "val_loss": val, "lr": 1e-3, "elapsed": it / 10})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        (path / "run.json").write_text(json.dumps({"pid": dead_pid(), "updated": 1_700_000_000.0, **status}))
    (path / "last.safetensors").write_bytes(b"x")
    return path


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    make_run(root, "a-finished", {"status": "finished", "iteration": 100, "max_iters": 100, "best_val_loss": 2.5, "elapsed": 12.0,
                                  "matmul_peak": {"dtype": "float32", "gflops": 0.5, "best_gflops": 1.0, "best_shape": "x", "processes": 2}},
             val_losses=(3.0, 2.7, 2.5))
    make_run(root, "b-stopped", {"status": "stopped", "iteration": 50, "max_iters": 100, "best_val_loss": 2.9, "elapsed": 5.0},
             val_losses=(3.1, 2.9), n_layer=4, learning_rate=3e-3)
    make_run(root, "c-crashed", {"status": "running", "iteration": 50, "max_iters": 100, "best_val_loss": 2.8}, val_losses=(3.0, 2.8))
    bad = root / "d-corrupt"
    bad.mkdir()
    (bad / "config.json").write_text('{"model": {"n_layer": 2,')  # torn write
    (bad / "run.json").write_text("{}")
    bad_status = make_run(root, "e-bad-status", None)
    (bad_status / "run.json").write_text("[not json")
    (root / "not-a-run").mkdir()  # no run files: not listed
    make_run(root / "sweep-1", "n_layer=2", {"status": "finished", "iteration": 100, "max_iters": 100, "best_val_loss": 2.6})
    return root


def by_name(summaries):
    return {s.name: s for s in summaries}


def test_summaries_of_each_kind_of_run(runs_root):
    summaries, fields = summarize_runs(discover_runs(runs_root), runs_root)
    runs = by_name(summaries)
    assert set(runs) == {"a-finished", "b-stopped", "c-crashed", "d-corrupt", "e-bad-status", "sweep-1/n_layer=2"}
    a = runs["a-finished"]
    assert (a.status, a.iteration, a.max_iters, a.best_val_loss, a.elapsed) == ("finished", 100, 100, 2.5, 12.0)
    assert a.n_params == param_report(build_config(BASE).model).total
    assert a.tokens_per_s == pytest.approx(2000.0)  # the median of the step records after the first window
    # Two processes (torchrun) measured 0.5 GFLOP/s each; the logged tokens/s are both of theirs.
    assert a.utilisation == pytest.approx(2000.0 * param_report(build_config(BASE).model).flops_per_token() / 1e9 / (2 * 0.5))
    assert runs["b-stopped"].utilisation is None  # its run.json has no peak (written before tinygpt measured one)
    assert runs["b-stopped"].status == "stopped"
    assert runs["c-crashed"].status == "crashed"  # says running, but its pid is dead
    for name, file in (("d-corrupt", "config.json"), ("e-bad-status", "run.json")):
        assert runs[name].status == "unreadable"
        assert runs[name].error.startswith(file)
    assert fields == ["n_layer", "learning_rate"]
    assert runs["b-stopped"].differing == {"n_layer": 4, "learning_rate": 3e-3}
    assert runs["d-corrupt"].differing == {}


@pytest.mark.parametrize("peak", [[1.0], {"gflops": -1.0}, {"gflops": 0}, {"gflops": "fast"}, {"gflops": 1.0, "processes": 0},
                                  {"gflops": 1.0, "processes": "two"}])
def test_a_peak_that_is_no_peak_gives_no_utilisation(tmp_path, peak):
    path = make_run(tmp_path, "odd", {"status": "finished", "iteration": 100, "max_iters": 100, "matmul_peak": peak})
    summary = read_summary(path)
    assert summary.status == "finished" and summary.tokens_per_s and summary.utilisation is None


def test_running_with_a_live_pid_stays_running(tmp_path):
    path = make_run(tmp_path, "live", {"status": "running", "iteration": 10, "max_iters": 100})
    status = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**status, "pid": os.getpid()}))
    assert read_summary(path).status == "running"


def test_missing_run_json_means_not_started_and_values_come_from_metrics(tmp_path):
    s = read_summary(make_run(tmp_path, "new", None, val_losses=(3.0, 2.4, 2.6)))
    assert s.status == "not started"
    assert s.best_val_loss == 2.4 and s.iteration == 100 and s.elapsed == 10.0


def test_differing_fields_and_labels():
    a, b, c = (build_config({**BASE, **kw}).flat() for kw in ({}, {"n_layer": 4}, {"n_layer": 4, "dropout": 0.1}))
    assert differing_fields([a]) == []
    assert differing_fields([a, a]) == []
    assert differing_fields([a, b, c]) == ["n_layer", "dropout"]
    run = RunSummary("r", Path("r"), "finished", config={**c, "data_dir": "/x/data/tiny"})
    assert label_for(run, ["n_layer", "dropout", "data_dir"]) == "n_layer=4, dropout=0.1, data_dir=tiny"
    assert label_for(run, []) == "r"


def test_sorting(runs_root):
    summaries, _ = summarize_runs(discover_runs(runs_root), runs_root)
    by_val = [s.name for s in sort_runs(summaries, "val_loss")]
    assert by_val[:4] == ["a-finished", "sweep-1/n_layer=2", "c-crashed", "b-stopped"]
    assert set(by_val[4:]) == {"d-corrupt", "e-bad-status"}  # no value: last, either way
    assert [s.name for s in sort_runs(summaries, "val_loss", reverse=True)][:4] == by_val[:4][::-1]
    assert [s.name for s in sort_runs(summaries, "n_layer", reverse=True)][0] == "b-stopped"
    with pytest.raises(UsageError, match="cannot sort by 'nope'"):
        sort_runs(summaries, "nope")


def test_runs_command_lists_every_run_and_succeeds_despite_corruption(run_cli, runs_root):
    proc = run_cli("runs", "--sort", "val_loss", cwd=runs_root.parent)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if name in line) for name in ("a-finished", "c-crashed", "b-stopped", "d-corrupt")]
    assert order == sorted(order)
    assert "unreadable" in proc.stdout and "crashed" in proc.stdout and "stopped" in proc.stdout
    assert "n_layer" in proc.stdout and "learning_rate" in proc.stdout  # the differing hyperparameters are columns
    assert "d-corrupt is unreadable: config.json" in proc.stdout


def test_runs_json_and_dir(run_cli, runs_root, tmp_path):
    proc = run_cli("runs", "--dir", str(runs_root / "sweep-1"), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["name"], r["status"], r["best_val_loss"]) for r in rows] == [("n_layer=2", "finished", 2.6)]
    empty = run_cli("runs", "--dir", str(tmp_path / "nothing"), "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    bad = run_cli("runs", "--sort", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("Error: cannot sort by 'nope'")


def test_the_runs_table_imports_no_torch():
    """`tinygpt runs` reads JSON files: it starts as fast as --help (it tells exports apart too)."""
    code = "import sys, tinygpt_cli.runs.table\nprint('LOADED', 'torch' in sys.modules)\n"
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "LOADED False" in proc.stdout, proc.stderr


def test_help_imports_neither_torch_nor_matplotlib(tmp_path):
    code = (
        "import runpy, sys\n"
        "for argv in (['--help'], ['plot', '--help'], ['runs', '--help'], ['sweep', '--help']):\n"
        "    sys.argv = ['tinygpt', *argv]\n"
        "    try:\n"
        "        runpy.run_module('tinygpt_cli', run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "print('LOADED', 'torch' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED False False" in proc.stdout
    assert "comma-separated" in proc.stdout  # sweep's help explains its grid flags


def test_a_narrow_terminal_never_cuts_a_run_name_or_its_best_val(run_cli, tmp_path):
    """Runs that differ in many settings, shown at 80 columns (a piped `tinygpt runs` too)."""
    root = tmp_path / "runs"
    settings = [dict(n_layer=2, learning_rate=1e-3, batch_size=4, dropout=0.0, weight_decay=0.1, beta2=0.99, grad_clip=1.0),
                dict(n_layer=4, learning_rate=3e-3, batch_size=8, dropout=0.1, weight_decay=0.0, beta2=0.95, grad_clip=0.5)]
    names = ["multilingual-corpus-long-name", "python-code-corpus-run"]
    for name, best, values in zip(names, (2.1234, 1.9876), settings):
        make_run(root, name, {"status": "finished", "iteration": 100, "max_iters": 100, "best_val_loss": best, "elapsed": 9.0},
                 **values)
    proc = run_cli("runs", env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    for whole in (*names, "2.1234", "1.9876", "100/100"):
        assert whole in proc.stdout, proc.stdout


def test_runs_rm_deletes_a_run_and_nothing_else_and_refuses_a_run_in_use(run_cli, tmp_path):
    from tinygpt_cli.rundir import RunDir

    root = tmp_path / "runs"
    done = make_run(root, "done", {"status": "finished", "iteration": 100, "max_iters": 100})
    mixed = make_run(root, "mixed", {"status": "crashed"})
    (mixed / "notes.txt").write_text("mine")
    busy = make_run(root, "busy", {"status": "running"})

    def rm(*args: str) -> subprocess.CompletedProcess:
        return run_cli("runs", *args)  # no terminal on stdin: --rm must ask for --yes

    refused = rm("--rm", "done")  # not a terminal, no --yes: nothing is deleted
    assert refused.returncode == 2 and "--yes" in refused.stderr and done.is_dir()
    assert rm("--rm", "done", "--yes").returncode == 0
    assert not done.exists()
    kept = rm("--rm", "mixed", "--yes")  # the user's notes: nothing of the folder is deleted
    assert kept.returncode == 2 and "notes.txt" in kept.stderr and (mixed / "config.json").exists()
    project = tmp_path / "myproj"
    project.mkdir()
    (project / "config.json").write_text("{}")  # somebody's project, not a run
    assert rm("--rm", str(project), "--yes").returncode == 2 and (project / "config.json").exists()
    with RunDir(busy).locked():  # a training holds it
        in_use = rm("--rm", "busy", "--yes")
    assert in_use.returncode == 1 and "in use" in in_use.stderr and (busy / "config.json").exists()


# --- comparing runs across tokenizers, and what is no run ------------------------------------

def with_bits_per_byte(path: Path, bits: list[float]) -> Path:
    """The run's evaluations, each with its bits per byte (as training logs them)."""
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    evals = iter(bits)
    records = [{**r, "val_bits_per_byte": next(evals)} if "val_loss" in r else r for r in records]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_runs_sort_by_bits_per_byte_when_tokenizers_differ(tmp_path):
    """A 4,096-token BPE has a higher loss per token than a 1,024-token one and can still be the
    better model per byte: the sort the README points to compares them."""
    finished = {"status": "finished", "iteration": 100, "max_iters": 100}
    small = with_bits_per_byte(make_run(tmp_path / "runs", "bpe-1024", finished, val_losses=(2.5, 2.03), vocab_size=1024), [1.2, 1.063])
    large = with_bits_per_byte(make_run(tmp_path / "runs", "bpe-4096", finished, val_losses=(2.9, 2.40), vocab_size=4096), [1.1, 0.903])
    summaries, _ = summarize_runs([small, large])
    assert [s.name for s in sort_runs(summaries, "val_loss")] == ["bpe-1024", "bpe-4096"]
    assert [s.name for s in sort_runs(summaries, "bits_per_byte")] == ["bpe-4096", "bpe-1024"]


def test_where_metrics_go_is_no_hyperparameter(tmp_path):
    a = make_run(tmp_path, "a", None, log="tensorboard")
    b = make_run(tmp_path, "b", None, learning_rate=3e-3)
    summaries, fields = summarize_runs([a, b])
    assert fields == ["learning_rate"]  # not log=tensorboard
    assert label_for(summaries[0], fields) == "learning_rate=0.001"


def test_an_export_in_the_runs_folder_is_no_broken_run(runs_root, tmp_path):
    from tinygpt_cli.interop.card import CARD_HEADER

    export = runs_root / "cpu-hf"
    export.mkdir()
    (export / "config.json").write_text('{"model_type": "gpt_neox"}')
    (export / "README.md").write_text(CARD_HEADER + "\nA model.\n")
    assert export not in discover_runs(runs_root)
    proc = subprocess.run([sys.executable, "-m", "tinygpt_cli", "runs", "--runs-dir", str(runs_root)], env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cpu-hf" not in proc.stdout.split("also in")[0]  # no row (the fixture's own broken runs have theirs)
    assert "1 transformers export (not runs): cpu-hf" in " ".join(proc.stdout.split())


def test_training_and_bench_put_the_steps_against_the_peak_of_the_models_own_products(run_cli, tiny_run, tiny_dataset):
    from tinygpt_cli.rundir import RunDir
    from tinygpt_cli.runs.table import read_summary

    peak = RunDir(tiny_run).read_status()["matmul_peak"]
    assert peak["dtype"] == "float32" and 0 < peak["gflops"] <= peak["best_gflops"]  # the tests' runs train in float32
    assert 0 < read_summary(tiny_run).utilisation < 1
    done = run_cli("bench", *tiny_cli_flags(tiny_dataset), "--steps", "2", "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert 0 < result["utilisation_of_best_shape"] <= result["utilisation"] < 1 and result["matmul_peak"]["best_shape"]


def test_a_product_too_large_to_time_whole_is_timed_on_a_part_within_the_bound(monkeypatch):
    import torch

    import tinygpt_cli.peak as peak
    from tinygpt_cli.config import ModelConfig

    made = []
    real_operand = peak._operand
    monkeypatch.setattr(peak, "_operand", lambda *a: made.append(a[:4]) or real_operand(*a))
    monkeypatch.setattr(peak, "TIMED_FLOPS", 2**22)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=64, block_size=64, vocab_size=5000)  # the LM head: 2 x 512 x 64 x 5000 FLOPs
    result = peak.measure_matmul_peak(config, 8, torch.device("cpu"), torch.float32, repeats=1)
    pairs = list(zip(made[::2], made[1::2]))  # (rows, cols, transposed, batch) of a, then of b
    assert pairs and all(2 * a[3] * a[0] * a[1] * b[1] <= 2**22 for a, b in pairs)
    assert 0 < result.gflops <= result.best_gflops
