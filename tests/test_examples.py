"""Every example runs, and every tinygpt command shown in the README and docs/ parses: they never rot."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from conftest import ONE_THREAD_ENV, REPO, cli_env
from tinygpt_cli.config import resolve_config
from tinygpt_cli.runs.sweep import plan_sweep

EXAMPLES = REPO / "examples"
TOMLS = sorted(EXAMPLES.glob("*.toml"))
# Shrink any example to seconds: the example supplies everything else.
SHRINK = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
          "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--warmup-iters", "1"]


def test_there_are_examples():
    names = {p.name for p in TOMLS}
    assert {"cpu.toml", "gpu_baby.toml", "own_text.toml"} <= names
    assert (EXAMPLES / "library.py").is_file()


@pytest.mark.parametrize("toml", TOMLS, ids=lambda p: p.name)
def test_toml_example_validates_and_trains(toml, tiny_dataset, run_cli, tmp_path):
    config = resolve_config(None, toml, {})  # the file alone is a valid configuration
    assert config.train.max_iters > 0
    result = run_cli("train", "--config", toml, *SHRINK, "--data-dir", tiny_dataset, "--out", tmp_path / "run",
                     "--device", "cpu", env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_library_example_runs(tiny_run, tiny_dataset, tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "library.py"), str(tiny_run), str(tiny_dataset), "The"],
                            env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "validation loss" in result.stdout and "parameter model" in result.stdout


def test_the_library_example_without_a_run_prints_its_usage(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "library.py")], env=cli_env(), capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("tinygpt as a library") and "Usage: python examples/library.py RUN" in result.stderr
    assert "Traceback" not in result.stderr


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TUTORIAL = REPO / "docs" / "tutorial.md"


def docs_text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in DOCS)


def readme_commands() -> list[str]:
    """`tinygpt ...` lines of the code blocks of the README and docs/ (prompt `$ ` removed,
    comments dropped)."""
    text = docs_text()
    commands = []
    for block in re.findall(r"```(?:bash|text)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.removeprefix("$ ").split("  #")[0].strip()
            if line.startswith("tinygpt "):
                commands.append(line)
    return commands


def readme_python() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_the_readmes_python_runs(tiny_run, tiny_dataset, tmp_path):
    """The README's library example, on the tiny run and its dataset instead of runs/cpu and tiny Shakespeare."""
    [code] = [block for block in readme_python() if "load_model" in block]
    code = code.replace("runs/cpu/best.safetensors", str(tiny_run / "best.safetensors")).replace("data/shakespeare", str(tiny_dataset))
    code = code.replace('"ROMEO:"', '"The "')  # a prompt in the tiny text's vocabulary
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) > 0  # bits per byte


def test_the_readmes_notebook_example_runs(shakespeare_path, tmp_path):
    """The README's notebook calls, outside a notebook (they print there), on a tiny model."""
    [code] = [block for block in readme_python() if "notebook as tg" in block]
    code = code.replace('tg.prepare_shakespeare("data/shakespeare")', f'tg.prepare_shakespeare("data/shakespeare", source={str(shakespeare_path)!r})')
    code = code.replace('preset="cpu",', 'preset="cpu", n_layer=1, n_head=2, n_embd=32, max_iters=20, eval_interval=10, eval_iters=2,')
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done: 20 iterations" in result.stdout and result.stdout.splitlines()[-1].strip()
    assert "\nROMEO:" in result.stdout and (tmp_path / "runs" / "cpu" / "best.safetensors").is_file()


def test_the_readmes_transformers_example_runs_on_an_export(tiny_run, run_cli, tmp_path):
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    assert run_cli("export", tmp_path / "hf", "--run", tiny_run, "--to", "hf").returncode == 0
    [code] = [block for block in readme_python() if "transformers" in block]
    code = code.replace("runs/cpu-hf", str(tmp_path / "hf")).replace('"ROMEO:"', '"The "')
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The ") and len(result.stdout) > 20


def test_the_readme_shows_and_lists_every_command():
    """Each command of the app is run in an example and has its row in the command reference."""
    from conftest import app_commands

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    reference = readme.split("## Command reference", 1)[1].split("\n## ", 1)[0]
    inline = re.findall(r"`(tinygpt [^`]+)`", docs_text())  # `tinygpt bench --preset baby` in the prose counts too
    shown = {tuple(shlex.split(c)[1:n]) for c in readme_commands() + inline for n in (2, 3)}
    for words in app_commands():
        assert words in shown, f"no example runs tinygpt {' '.join(words)}"
        assert f"| `tinygpt {' '.join(words)}" in reference, f"tinygpt {' '.join(words)} is not in the command reference"


# sweep's own options and how many values each takes; every other flag is a grid flag.
SWEEP_OPTIONS = {"--preset": 1, "--config": 1, "--out": 1, "--dry-run": 0, "--json": 0}


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command, run_cli, tmp_path):
    """Each command's subcommand and flags exist: `--help` after them fails on any unknown flag.
    sweep passes its grid flags through unchecked, so its grid is planned (validated, not run)."""
    args = shlex.split(command)[1:]
    result = run_cli(*args, "--help")
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    assert "Usage" in result.stdout
    if args[0] == "sweep":
        own, grid, rest = {}, [], args[1:]
        while rest:
            width = SWEEP_OPTIONS.get(rest[0])
            if width is None:
                grid.append(rest.pop(0))
            else:
                own[rest[0]] = rest[1] if width else True
                del rest[: 1 + width]
        assert plan_sweep(grid, preset=own.get("--preset"), out=tmp_path / "sweep").cells


def test_user_facing_text_speaks_of_the_users_paths_only():
    """A user's clone has no ../shared (the project's own test data): neither the README nor
    any message or help text may send them there."""
    texts = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in DOCS}
    texts |= {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in (REPO / "src").rglob("*.py")}
    assert [name for name, text in texts.items() if "shared/data" in text] == []


SYMBOL = r"`([\w/]+)\.py:([\w.]+)`"  # `data/vocab.py:Vocabulary`, under src/tinygpt_cli/


def test_every_symbol_the_readme_points_to_exists():
    """The README's where-each-idea-lives table and each tutorial lesson's "Read next" line."""
    import importlib

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Where each idea lives", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(SYMBOL, table)) >= 15
    assert TUTORIAL.read_text(encoding="utf-8").count("\nRead next: ") == 12
    symbols = re.findall(SYMBOL, docs_text())
    for module, dotted in symbols:
        obj = importlib.import_module(f"tinygpt_cli.{module.replace('/', '.')}")
        for part in dotted.split("."):
            assert hasattr(obj, part), f"{module}.py:{dotted}"
            obj = getattr(obj, part)


def test_every_test_the_guarantees_name_exists():
    """docs/guarantees.md names the test behind each promise: a renamed test must not leave a
    promise without proof."""
    text = (REPO / "docs" / "guarantees.md").read_text(encoding="utf-8")
    named, module = [], None
    for file, test in re.findall(r"`(?:(test_\w+)\.py)?(?:::(test_\w+?)(?:_\*)?)?`", text):
        module = file or module
        if test:
            named.append((module, test))
    assert len(named) >= 20
    missing = [f"{m}.py::{t}" for m, t in named
               if not re.search(rf"^def {t}", (REPO / "tests" / f"{m}.py").read_text(encoding="utf-8"), re.M)]
    assert missing == []


def tutorial_block(command: str) -> str:
    """The output the tutorial shows under `$ COMMAND`."""
    text = TUTORIAL.read_text(encoding="utf-8")
    return text.split(f"$ {command}\n", 1)[1].split("```", 1)[0]


NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?%?")


@pytest.mark.parametrize("command", ["tinygpt params --preset cpu", "tinygpt prepare shakespeare --source path/to/input.txt",
                                     "tinygpt vocab --limit 8"])
def test_the_lessons_that_need_no_training_print_what_the_tutorial_shows(command, run_cli, tmp_path, shakespeare_path):
    """Their numbers depend on no CPU, precision or load (the tutorial says what does): each one
    the tutorial prints comes out of the command as it runs today."""
    if "vocab" in command:
        assert run_cli("prepare", "shakespeare", "--source", shakespeare_path).returncode == 0
    args = shlex.split(command.replace("path/to/input.txt", str(shakespeare_path)))[1:]
    proc = run_cli(*args, env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    shown = NUMBER.findall(tutorial_block(command))
    assert len(shown) > 5
    assert [n for n in shown if n not in NUMBER.findall(proc.stdout)] == []


# How far a trained lesson's figures may come out from the tutorial's (it states them): the
# run there took one CPU's path (bfloat16, its thread count), another takes another.
LOSS_TOLERANCE = 0.1  # nats
PROBABILITY_TOLERANCE = 10.0  # percentage points


def loss_after(label: str, text: str) -> float:
    return float(re.search(rf"{label} (\d+\.\d+)", text).group(1))


def predictions(text: str) -> dict[str, float]:
    """`predict`'s table, most likely first: each token and the model's probability (%)."""
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│ ")]
    return {cells[0]: float(cells[1].rstrip("%")) for cells in rows}


def test_the_trained_lessons_come_out_as_the_tutorial_says_within_its_tolerance(run_cli, tmp_path, shakespeare_path):
    """Lessons 7 and 8 on a run trained here: the counts exactly, the losses within
    LOSS_TOLERANCE, the next token's probability within PROBABILITY_TOLERANCE, the sample
    as long as the one shown (its text differs from machine to machine, as the tutorial says)."""
    assert run_cli("prepare", "shakespeare", "--source", shakespeare_path).returncode == 0
    width = {"COLUMNS": "100"}
    train = run_cli(*shlex.split("train --preset cpu --out runs/cpu"), env=width, timeout=900)
    assert train.returncode == 0, train.stderr
    shown = tutorial_block("tinygpt train --preset cpu --out runs/cpu")
    for count in ("0.80M parameters", "1,024 tokens/iteration", "done: 1,200 iterations", "over the whole validation split, 111,539 tokens"):
        assert count in shown and count in train.stdout
    assert abs(loss_after("val loss", train.stdout) - loss_after("val loss", shown)) <= LOSS_TOLERANCE

    def lesson(command: str) -> tuple[str, str]:
        """What the command prints (the `loaded` line on stderr first, as a terminal shows it) and what the tutorial shows."""
        proc = run_cli(*shlex.split(command)[1:], env=width)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr + proc.stdout, tutorial_block(command)

    got, shown = lesson("tinygpt eval --run runs/cpu --data-dir data/shakespeare")
    assert loss_after(r"val \(all\)\s+│\s+[\d,]+\s+│", got) == pytest.approx(loss_after("val loss", train.stdout), abs=1e-4)
    assert abs(loss_after(r"val \(all\)\s+│\s+111,539\s+│", got) - loss_after(r"val \(all\)\s+│\s+111,539\s+│", shown)) <= LOSS_TOLERANCE

    got, shown = lesson('tinygpt predict --run runs/cpu --prompt "JULIET: O Rome" --temperature 0.5 --top-k 5 --show 8')
    # Token by token, not by rank: two nearly tied tokens may swap places from one run to another.
    got_p, shown_p = predictions(got), predictions(shown)
    for token in list(shown_p)[:3]:
        assert token in got_p and abs(got_p[token] - shown_p[token]) <= PROBABILITY_TOLERANCE, token

    got, shown = lesson('tinygpt surprise --run runs/cpu "ROMEO: What, ho! apothecary!"')
    assert "27 tokens scored" in got and abs(loss_after("loss", got) - loss_after("loss", shown)) <= LOSS_TOLERANCE

    got, shown = lesson('tinygpt generate --run runs/cpu --prompt "JULIET:" --temperature 0.5 --top-k 10 --max-new-tokens 200 --seed 7')
    loaded, text = got.split("\n", 1)
    assert loaded == shown.split("\n", 1)[0] == "loaded runs/cpu/best.safetensors (iteration 1,200)"
    assert text.startswith("JULIET:") and len(text.rstrip("\n")) == len("JULIET:") + 200
