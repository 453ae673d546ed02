"""Every command with every option (and argument) set to a hostile value: empty, negative, NaN,
a number past any limit, a FIFO, a folder, a missing file. Each case ends, within a time limit,
with success or one `Error:` line: never a traceback, an internal error, a crash or a hang.

The commands and their options come from the app itself, so a new option is covered the day it
is added; each command has a cheap starting point (BASES) that succeeds on its own."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ALARM_SECONDS, Hang, app_commands, assert_one_error, tiny_cli_flags, tiny_config


pytestmark = pytest.mark.usefixtures("torch_one_thread")



COMMANDS = app_commands()


@dataclass
class Case:
    """A folder of its own for one case, and the shared read-only tiny run, chat run and dataset."""

    folder: Path
    run: Path
    dataset: Path
    text: Path
    chat_run: Path

    def chats(self) -> Path:
        """A conversation file of the tiny text's words."""
        path = self.folder / "chats.jsonl"
        turns = [{"role": "user", "content": "the king"}, {"role": "assistant", "content": "a"}]
        path.write_text((json.dumps({"messages": turns}) + "\n") * 12, encoding="utf-8")
        return path

    def copy_of_run(self) -> Path:
        return Path(shutil.copytree(self.run, self.folder / "resumable"))


TRAIN_BRIEFLY = dict(max_iters=2, warmup_iters=0, eval_interval=1, eval_iters=1)

# Each command's cheap starting point: (arguments, options). A case sets one option to a hostile
# value (appended: the last value of an option wins) or replaces one argument.
BASES = {
    ("prepare", "shakespeare"): lambda c: ([], ["--source", c.text, "--no-verify", "--data-dir", c.folder / "d"]),
    ("prepare", "text"): lambda c: ([c.text], ["--data-dir", c.folder / "d"]),
    ("prepare", "chat"): lambda c: ([c.chats()], ["--data-dir", c.folder / "d"]),
    ("chat",): lambda c: ([], ["--run", c.chat_run, "--max-reply-tokens", "3"]),
    ("vocab",): lambda c: ([c.dataset], ["--limit", "3"]),
    ("train",): lambda c: ([], [*tiny_cli_flags(c.dataset, **TRAIN_BRIEFLY), "--out", c.folder / "run"]),
    ("resume",): lambda c: ([], ["--run", c.copy_of_run()]),
    ("sweep",): lambda c: ([], [*tiny_cli_flags(c.dataset, **TRAIN_BRIEFLY, seed="1,2"), "--out", c.folder / "sweep"]),
    ("scaling",): lambda c: ([], ["--time", "5m", "--shapes", "1x16,1x32", "--data-dir", c.dataset, "--out", c.folder / "scaling", "--dry-run"]),
    ("bench",): lambda c: ([], [*tiny_cli_flags(None, **TRAIN_BRIEFLY), "--vocab-size", "50", "--steps", "1", "--repeats", "1"]),
    ("generate",): lambda c: ([], ["--run", c.run, "--max-new-tokens", "3", "--prompt", "the"]),
    ("params",): lambda c: ([], ["--run", c.run]),
    ("eval",): lambda c: ([], ["--run", c.run, "--max-tokens", "64"]),
    ("attention",): lambda c: ([], ["--run", c.run, "--prompt", "the king"]),
    ("predict",): lambda c: ([], ["--run", c.run, "--prompt", "the king"]),
    ("surprise",): lambda c: (["the king"], ["--run", c.run]),
    ("embeddings",): lambda c: ([], ["--run", c.run, "--show", "2"]),
    ("export",): lambda c: ([c.folder / "hf"], ["--run", c.run, "--to", "hf"]),
    ("plot",): lambda c: ([], ["--run", c.run, "--png", c.folder / "loss.png"]),
    ("runs",): lambda c: ([], ["--dir", c.run.parent]),
    ("serve",): lambda c: ([], ["--run", c.run, "--port", "0"]),  # it returns once it listens (see `case`)
}


def hostile_values(folder: Path) -> dict[str, str]:
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    (folder / "a-folder").mkdir()
    return {"empty": "", "negative": "-1", "nan": "nan", "huge": "9" * 30, "fifo": str(fifo),
            "folder": str(folder / "a-folder"), "missing": str(folder / "missing.txt")}


VALUE_NAMES = ["empty", "negative", "nan", "huge", "fifo", "folder", "missing"]


def targets(words: tuple[str, ...]) -> list[str]:
    """The options of a command that take a value, and its arguments (as '#0', '#1', ...), the
    hidden ones aside (a deprecated spelling, which adds its note before any error)."""
    params = COMMANDS[words].params
    arguments = [p for p in params if p.param_type_name == "argument" and not p.hidden]  # hidden: a deprecated spelling
    return ([p.opts[0] for p in params if p.param_type_name == "option" and not p.is_flag and p.opts[0] != "--help"]
            + [f"#{i}" for i in range(len(arguments))])


CASES = [(words, target, value) for words in COMMANDS for target in targets(words) for value in VALUE_NAMES]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    """A tiny model trained for two steps on conversations (what `chat` needs to start)."""
    from tinygpt_cli.data.prepare_chat import prepare_chat
    from tinygpt_cli.lifecycle import train_new

    root = tmp_path_factory.mktemp("chat_run")
    case = Case(root, root, root, root, root)
    prepare_chat([str(case.chats())], root / "data", "chats", context=16)
    train_new(tiny_config(root / "data", **TRAIN_BRIEFLY), root / "run")
    return root / "run"


@pytest.fixture
def case(tmp_path, tiny_run, tiny_dataset, chat_run, monkeypatch) -> Case:
    text = tmp_path / "text.txt"
    shutil.copy(Path(tiny_dataset).parent / "tiny.txt", text)
    monkeypatch.chdir(tmp_path)  # default folders (runs/, data/) land here
    monkeypatch.setattr(sys, "stdin", io.StringIO("the king\n"))  # what chat answers (and prepare reads from -)
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (in the test extra) installs uvicorn")
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, sockets=None: None)  # serve: all up to serving, then return
    return Case(tmp_path, tiny_run, tiny_dataset, text, chat_run)


def command_line(words: tuple[str, ...], case: Case, target: str | None = None, value: str | None = None) -> list[str]:
    arguments, options = BASES[words](case)
    arguments = list(arguments)
    if target is not None and target.startswith("#"):
        index = int(target[1:])
        arguments[index:index + 1] = [value]
    elif target is not None:
        options = [*options, target, value]
    return [*words, *options, "--", *arguments] if arguments else [*words, *options]


def test_every_command_has_a_starting_point():
    assert sorted(BASES) == sorted(COMMANDS)


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_each_starting_point_succeeds(tinygpt, case, alarm, words):
    code, _, err = tinygpt(*command_line(words, case))
    assert code == 0, err


@pytest.mark.parametrize("words, target, value", CASES, ids=[f"{' '.join(w)} {t}={v}" for w, t, v in CASES])
def test_a_hostile_value_ends_in_success_or_one_error_line(tinygpt, case, alarm, words, target, value):
    args = command_line(words, case, target, hostile_values(case.folder)[value])
    try:
        code, _, err = tinygpt(*args)
    except Hang:
        pytest.fail(f"tinygpt {' '.join(map(str, args))} ran past {ALARM_SECONDS} s")
    if code:
        assert_one_error(code, err, 1 if code == 1 else 2)
