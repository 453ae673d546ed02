"""The notebook (examples/tinygpt.ipynb) run top to bottom in a real Jupyter kernel, and the
calls it makes (tinygpt_cli.notebook) outside one."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_MODEL, TINY_TRAIN, cli_env
from tinygpt_cli import notebook as tg

NOTEBOOK = REPO / "examples" / "tinygpt.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def cell_calling(nb, call: str):
    """The one code cell whose source holds `call`."""
    [cell] = [c for c in code_cells(nb) if call in c.source]
    return cell


def outputs_of(cell, mime: str) -> list[str]:
    return [o.data[mime] for o in cell.outputs if mime in o.get("data", {})]


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch) -> str:
    """A kernel spec that starts this interpreter (the one with tinygpt installed), whatever
    other Python kernels the machine has."""
    spec = tmp_path / "jupyter" / "kernels" / "tinygpt-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                  "display_name": "tinygpt test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "tinygpt-test"


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_and_draws_its_pictures(tmp_path, monkeypatch, shakespeare_path, kernel_of_this_python):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for name, value in cli_env({"TINYGPT_NOTEBOOK_QUICK": "1", "TINYGPT_SHAKESPEARE_SOURCE": str(shakespeare_path),
                                "OMP_NUM_THREADS": "1"}).items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name=kernel_of_this_python, resources={"metadata": {"path": str(work)}}).execute()

    assert all(c.execution_count for c in code_cells(nb))  # a failing cell stops execute() with its error
    assert not [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    for call in ("tg.plot(", "tg.attention(", "tg.embeddings("):
        [png] = outputs_of(cell_calling(nb, call), "image/png")
        assert base64.b64decode(png).startswith(PNG_MAGIC), call
    [page] = outputs_of(cell_calling(nb, "tg.surprise("), "text/html")
    assert "bits per byte" in page and "<span title=" in page
    [training] = outputs_of(cell_calling(nb, 'tg.train("runs/base"'), "text/html")  # one display, updated in place
    assert "eval at 0:" in training and "done: 40 iterations" in training and "<progress value='40' max='40'" in training
    [tuning] = outputs_of(cell_calling(nb, 'tg.train("runs/greet"'), "text/html")
    assert "fine-tuning: the weights of runs/base" in tuning and "the assistant&#x27;s tokens only" in tuning
    sample = "".join(o.text for o in cell_calling(nb, "tg.generate(").outputs if o.output_type == "stream")
    assert sample.startswith("ROMEO:") and len(sample) > 60
    assert (work / "runs" / "base-hf" / "config.json").is_file()  # the export, which transformers then loaded


def test_the_committed_notebook_keeps_no_outputs():
    """Outputs would go stale with every change to training, and swell every diff: Colab and the
    test above make their own."""
    nb = json.loads(NOTEBOOK.read_text())
    assert [c for c in nb["cells"] if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])] == []


def test_training_outside_a_notebook_prints_its_lines(tiny_dataset, tmp_path, capsys, torch_one_thread):
    result = tg.train(tmp_path / "run", preset="cpu", data_dir=str(tiny_dataset), **{**TINY_MODEL, **TINY_TRAIN, "max_iters": 20})
    printed = capsys.readouterr().out
    assert result.iteration == 20
    assert printed.startswith(f"{tmp_path / 'run'}: ") and "eval at 10:" in printed and "done: 20 iterations" in printed


def test_training_for_a_time_plans_the_run_and_keeps_the_shape_given(tiny_dataset, tmp_path, capsys, torch_one_thread):
    settings = {**TINY_MODEL, **TINY_TRAIN, "max_iters": None, "eval_interval": None, "time": "4s"}
    result = tg.train(tmp_path / "run", preset="cpu", data_dir=str(tiny_dataset), **settings)
    printed = capsys.readouterr().out
    assert printed.startswith("time dial: 4s on this machine: 2 layers x 32 wide") and "note: kept your --n-layer" in printed
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["time"] == 4 and saved["train"]["max_iters"] == result.iteration


def test_a_table_escapes_its_cells_and_draws_bars():
    table = tg.Table("the <next> token", ["token", "share", ""], [["<b>", "50.0%", tg.Bar(0.5)], ["&", "5.0%", tg.Bar(0.05)]])
    page = table._repr_html_()
    assert "&lt;b&gt;" in page and "&amp;" in page and "<b>" not in page.replace("<b>the", "")
    assert 'width:50.0%' in page and 'width:5.0%' in page
    assert repr(table).splitlines()[2] == "<b>    50.0%  " + "█" * 10


def test_a_picture_shows_and_saves_the_same_png(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    picture = tg.attention(tiny_run, "The king")
    assert picture._repr_png_().startswith(PNG_MAGIC)
    assert picture.save(tmp_path / "a.png").read_bytes() == picture._repr_png_()
    assert "attention" in repr(picture)


def test_an_error_in_a_notebook_shows_as_the_command_line_shows_it(capsys):
    from tinygpt_cli.errors import Command, UsageError

    tg.brief_error(None, UsageError, UsageError("no run folder at runs/x", Command("resume", options={"run": "runs/x"})), None)
    assert capsys.readouterr().err == "Error: no run folder at runs/x\nTry: tinygpt resume --run runs/x\n"


@pytest.mark.parametrize("settings", [{"temperature": -0.5}, {"top_k": 0}, {"top_p": 1.5}])
def test_sampling_settings_have_the_command_lines_bounds(tiny_run, settings):
    from tinygpt_cli.errors import UsageError

    with pytest.raises(UsageError):
        tg.generate(tiny_run, "The ", 5, **settings)


def test_plot_reads_runs_as_the_command_does(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    from tinygpt_cli.errors import TinyGPTError

    with pytest.raises(TinyGPTError, match="no run folder"):
        tg.plot(tmp_path / "runs" / "misspelt")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tiny_run / "config.json").read_text())
    with pytest.raises(TinyGPTError, match="none of these runs has logged any loss yet"):
        tg.plot(tmp_path / "empty")
    assert tg.plot(tiny_run).figure.axes[0].get_ylabel() == "loss (cross-entropy, nats per token)"
