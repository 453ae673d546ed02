"""One vocabulary of options: a flag's name means one thing, with one default and one help text,
in every command. The commands and their options come from the app itself."""

from __future__ import annotations

import re
import shlex
from collections import defaultdict

import pytest
from conftest import app_commands

# Names whose help and default rightly differ between commands, each with why: the same idea, told
# as each command uses it. Everything else must read the same, with the same default, everywhere.
SAME_IDEA_TOLD_APART = {
    "--data-dir": "the dataset folder: prepare writes it, train and eval read it",
    "--glob": "the files of a folder to read: any text for prepare text, JSON Lines for prepare chat",
    "--dtype": "the precision the model computes in: a training's mixed precision, or generate's stored weights",
    "--out": "the folder the command writes: a run (train) or a grid's runs (sweep, scaling)",
    "--time": "how long: one run (train, resume) or a whole grid of runs (scaling)",
    "--png": "the PNG to write: what the picture shows is the command's",
    "--prompt": "the text the model reads: generate may start from nothing, attention and predict need a text",
    "--run": "the run to read: params counts it instead of the flags, the others default to the latest run",
    "--seed": "the random seed: of a training, or of the text generate draws",
    "--show": "how many items to list: what is listed is the command's",
    "--val-fraction": "the share held out for validation: of a text, or of the conversations",
    "--vocab-size": "the vocabulary's size: the BPE prepare trains, or the model params and bench size",
}
RESUMED = "the run's saved value"  # resume's flags default to what the run was trained with


def effective(option) -> tuple[str, str | None]:
    """(help without its "(default ...)" tail, the default it states or has)."""
    text = option.help or ""
    stated = re.search(r"\s*\(default:? ([^()]*)\)$", text)
    default = stated.group(1) if stated else None if option.default is None else str(option.default)
    return (text[: stated.start()] if stated else text), (None if default == RESUMED else default)


def options_by_name() -> dict[str, list[tuple[str, str, str | None]]]:
    found = defaultdict(list)
    for words, command in app_commands().items():
        for option in command.params:
            if option.param_type_name == "option":
                for name in option.opts:
                    found[name].append((" ".join(words), *effective(option)))
    return found


OPTIONS = options_by_name()


@pytest.mark.parametrize("name", sorted(set(OPTIONS) - set(SAME_IDEA_TOLD_APART)))
def test_an_option_has_one_default_in_every_command(name):
    defaults = {default for _, _, default in OPTIONS[name] if default is not None}
    assert len(defaults) <= 1, f"{name}: {OPTIONS[name]}"


@pytest.mark.parametrize("name", sorted(set(OPTIONS) - set(SAME_IDEA_TOLD_APART)))
def test_an_option_has_one_help_text_in_every_command(name):
    helps = {help_text for _, help_text, _ in OPTIONS[name]}
    assert len(helps) == 1, f"{name}: {OPTIONS[name]}"


def test_the_told_apart_names_are_still_used_by_several_commands():
    assert all(len({c for c, _, _ in OPTIONS[name]}) > 1 for name in SAME_IDEA_TOLD_APART)


def test_predict_shows_what_generate_draws():
    """predict claims to show generate's distribution: its sampling options are generate's."""
    commands = app_commands()
    sampling = {"temperature", "top_k", "top_p"}
    shown = {p.name: p for p in commands[("predict",)].params if p.name in sampling}
    drawn = {p.name: p for p in commands[("generate",)].params if p.name in sampling}
    assert sorted(shown) == sorted(drawn) == sorted(sampling)
    assert all(shown[n].default == drawn[n].default and shown[n].help == drawn[n].help for n in sampling)


@pytest.mark.parametrize("old, new", [
    (["resume", "RUN", "--max-iters", "30"], ["resume", "--run", "RUN", "--max-iters", "30"]),
    (["export", "RUN", "OUT", "--to", "hf"], ["export", "OUT", "--run", "RUN", "--to", "hf"]),
    (["plot", "RUN", "--terminal"], ["plot", "--run", "RUN", "--terminal"]),  # plot overlays both when named twice
])
def test_a_run_named_the_old_way_still_works_and_says_the_new_way(tinygpt, tiny_run, tmp_path, old, new):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    fill = lambda args, out: [str(run) if a == "RUN" else str(tmp_path / out) if a == "OUT" else a for a in args]  # noqa: E731
    code, stdout, err = tinygpt(*fill(old, "old"))
    assert code == 0, err
    assert err.startswith("note: naming the run as an argument is deprecated: tinygpt ")
    suggested = shlex.split(err.splitlines()[0].split("deprecated: tinygpt ", 1)[1])
    assert suggested == [w for a in fill(old, "old") for w in (["--run", a] if a == str(run) else [a])]  # the same command, runnable
    code, new_stdout, new_err = tinygpt(*fill(new, "new"))
    assert code == 0 and "deprecated" not in new_err
    twice = tinygpt(*fill(old, "twice"), "--run", str(run))
    assert (twice[0], "named twice" in twice[2]) == ((0, False) if old[0] == "plot" else (2, True))
