"""Conversations: the chat data, training on the assistant's tokens only, `tinygpt chat`, the
export's chat template in transformers, and task evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHAT_MODEL, assert_one_error, tiny_config
from safetensors.torch import load_file

from tinygpt_cli.checkpoint import load_checkpoint, load_model
from tinygpt_cli.conversation import Conversation
from tinygpt_cli.data.chat import CHAT_TEMPLATE, CONVERSATION_START, TRAINED, chat_token_ids, render, prompt_ids
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.data.prepare import TokenizerChoice
from tinygpt_cli.data.prepare_chat import prepare_chat
from tinygpt_cli.errors import TinyGPTError
from tinygpt_cli.interop.pretrained import initial_weights, load_pretrained
from tinygpt_cli.lifecycle import resume, train_new
from tinygpt_cli.model import GPT
from tinygpt_cli.tasks import wilson_interval

def conversation(*turns: str, system: str | None = None) -> dict:
    roles = ["user", "assistant"]
    return {"messages": ([{"role": "system", "content": system}] if system else []) +
            [{"role": roles[n % 2], "content": t} for n, t in enumerate(turns)]}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


# --- the data ----------------------------------------------------------------------------------
GOOD = conversation("Hi, I'm Ada.", "Hello, Ada!")
BAD = {
    "not JSON": ("{oops", "not JSON"),
    "not an object": ("[1, 2]", "not a conversation"),
    "no messages": ({"text": "hi"}, "not a conversation"),
    "unknown role": ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot'"),
    "empty content": (conversation("Hi", "  "), "message 2 (assistant) has no content"),
    "content not a string": ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}, "has no content"),
    "roles repeat": ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "message 2 is user's where assistant's was due"),
    "system not first": ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "a system message may only come first"),
    "assistant first": ({"messages": [{"role": "assistant", "content": "a"}]}, "the user first"),
    "ends with the user": (conversation("a", "b", "c"), "the last message is the user's"),
    "spells a chat token": (conversation("say <|end|>", "no"), "spells the chat token <|end|>"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_every_broken_rule_is_one_error_naming_the_file_and_line_and_nothing_is_written(case, tmp_path, tinygpt):
    record, message = BAD[case]
    source = write_jsonl(tmp_path / "chats.jsonl", [GOOD, "", record, GOOD])
    code, _, stderr = tinygpt("prepare", "chat", source, "--data-dir", tmp_path / "data")
    assert_one_error(code, stderr, 2, f"{source}:3", message)
    assert not (tmp_path / "data").exists()


def test_skip_invalid_leaves_bad_records_out_and_counts_them(tmp_path, tinygpt):
    source = write_jsonl(tmp_path / "chats.jsonl", [GOOD] * 12 + [BAD["roles repeat"][0], "{oops"])
    code, stdout, stderr = tinygpt("prepare", "chat", source, "--data-dir", tmp_path / "data", "--skip-invalid", "--json")
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["chat"]["skipped"] == 2 and len(info["skipped"]) == 2 and f"{source}:14" in info["skipped"][1]
    assert sum(info["chat"]["conversations"].values()) == 12


def test_alpaca_records_become_the_users_turn_and_the_reply(tmp_path):
    alpaca = [{"instruction": "Greet", "input": "Ada", "output": "Hello, Ada!"}] * 10
    array, lines = tmp_path / "alpaca.json", write_jsonl(tmp_path / "alpaca.jsonl", alpaca)
    array.write_text(json.dumps(alpaca), encoding="utf-8")
    for source, folder in ((array, "a"), (lines, "b")):
        data = load_dataset(prepare_chat([str(source)], tmp_path / folder, folder).info.path)
        ends = np.flatnonzero(data.train_mask & CONVERSATION_START)
        first = data.train[ends[0] : ends[1]].tolist()
        assert data.tokenizer.decode(first) == render([{"role": "user", "content": "Greet\n\nAda"}, {"role": "assistant", "content": "Hello, Ada!"}])


def test_only_the_assistants_content_and_end_of_turn_are_trained_and_long_conversations_are_cut_at_a_turn(tmp_path):
    records = [conversation("Hi, I'm Ada.", "Hello, Ada!", "Bye.", "Bye, Ada!" * 8, system="Be kind.")] * 10
    info = prepare_chat([str(write_jsonl(tmp_path / "c.jsonl", records))], tmp_path / "data", "c", context=60).info
    data = load_dataset(tmp_path / "data")
    one = slice(0, int(np.flatnonzero(data.train_mask & CONVERSATION_START)[1]))
    ids, mask = data.train[one].tolist(), data.train_mask[one]
    trained = "".join(data.tokenizer.decode([i]) for i, m in zip(ids, mask) if m & TRAINED)
    assert trained == "Hello, Ada!<|end|>"  # the second exchange did not fit 60 tokens: cut after the first
    assert data.tokenizer.decode(ids) == "<|system|>Be kind.<|end|><|user|>Hi, I'm Ada.<|end|><|assistant|>Hello, Ada!<|end|>"
    assert info.chat["cut"] == 10 and info.chat["dropped"] == 0
    with pytest.raises(TinyGPTError, match="not one conversation fits the context of 30 tokens .10 dropped"):
        prepare_chat([str(tmp_path / "c.jsonl")], tmp_path / "none", "c", context=30)  # not even the first exchange fits


def test_the_mask_view_tells_trained_tokens_apart(chat_run, tinygpt):
    data = json.loads((chat_run / "config.json").read_text())["train"]["data_dir"]
    code, stdout, _ = tinygpt("vocab", data, "--show-mask", "1")
    assert code == 0
    assert "<|user|>" in stdout and "<|assistant|>[[Nice to meet you, " in stdout and "!<|end|>]]" in stdout


# --- training ----------------------------------------------------------------------------------
def test_masked_tokens_get_no_gradient_and_a_window_with_none_trained_adds_nothing():
    torch.manual_seed(0)
    model = GPT(tiny_config(".", vocab_size=20, block_size=8).model)
    x = torch.randint(20, (2, 8))
    trained = torch.zeros(2, 8, dtype=torch.bool)
    trained[0, 5:] = True  # the second window trains nothing

    def grads(targets: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        _, loss = model(x, torch.where(trained, targets, -1), reduction="sum")
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    a, b = grads(torch.randint(20, (2, 8))), grads(torch.randint(20, (2, 8)))
    shared = torch.where(trained, torch.randint(20, (2, 8)), 0)
    assert any(not torch.equal(g, h) for g, h in zip(a, b))  # the trained targets differ: so do the gradients
    assert all(torch.equal(g, h) for g, h in zip(grads(shared + 0), grads(torch.where(trained, shared, 7))))  # masked ones: no effect
    model.zero_grad()
    _, loss = model(x[1:], torch.full((1, 8), -1), reduction="sum")
    loss.backward()
    assert loss.item() == 0 and all(not p.grad.any() for p in model.parameters())


def test_a_chat_run_trains_on_the_assistants_tokens_and_resumes_bit_for_bit(chat_run, tmp_path):
    data = Path(json.loads((chat_run / "config.json").read_text())["train"]["data_dir"])
    settings = {**CHAT_MODEL, "eval_interval": 5, "warmup_iters": 2, "lr_decay": "constant", "dropout": 0.1}
    train_new(tiny_config(data, max_iters=20, **settings), tmp_path / "whole")
    train_new(tiny_config(data, max_iters=10, **settings), tmp_path / "part")
    resume(tmp_path / "part", {"max_iters": 20})
    whole, part = (load_file(str(tmp_path / r / "last.safetensors")) for r in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)
    assert load_checkpoint(tmp_path / "whole" / "best.safetensors").chat_template == CHAT_TEMPLATE


def test_eval_scores_the_assistants_tokens_of_each_conversation(chat_run, tinygpt):
    code, stdout, _ = tinygpt("eval", "--run", chat_run, "--json")
    val = json.loads(stdout)["val"]
    data = load_dataset(json.loads((chat_run / "config.json").read_text())["train"]["data_dir"])
    assert code == 0 and val["tokens"] == int(((data.val_mask & TRAINED) > 0).sum())
    assert val["loss"] == pytest.approx(json.loads((chat_run / "run.json").read_text())["final_eval"]["val_loss"], rel=1e-6)
    assert val["loss"] < 0.5  # the replies are mostly a copy of the question: a trained model is sure of them


def test_fine_tuning_a_text_run_grows_its_embedding_by_the_chat_tokens_from_the_mean(tiny_run, tmp_path, greetings):
    from tinygpt_cli.data.chat import CHAT_TOKENS

    base = load_checkpoint(tiny_run / "best.safetensors")
    records = [conversation("a b c", "the the")] * 30  # characters the tiny run's vocabulary has
    prepare_chat([str(write_jsonl(tmp_path / "c.jsonl", records))], tmp_path / "data", "c",
                 TokenizerChoice("given", given=base.tokenizer), context=16)
    pretrained = load_pretrained(str(tiny_run))
    rows = initial_weights(pretrained, base.model_config.model_copy(update={"vocab_size": base.tokenizer.size + len(CHAT_TOKENS)}))["tok_emb.weight"]
    old = base.weights["tok_emb.weight"]
    assert rows.shape[0] == old.shape[0] + len(CHAT_TOKENS) and torch.equal(rows[: old.shape[0]], old)
    assert torch.allclose(rows[old.shape[0] :], old.mean(dim=0).expand(len(CHAT_TOKENS), -1))
    train_new(tiny_config(tmp_path / "data", init_from=str(tiny_run), max_iters=2, eval_interval=1, warmup_iters=1), tmp_path / "tuned")
    assert load_checkpoint(tmp_path / "tuned" / "last.safetensors").weights["tok_emb.weight"].shape == rows.shape


# --- talking -----------------------------------------------------------------------------------
def test_chat_answers_each_piped_line_and_json_prints_the_conversation(chat_run, run_cli):
    piped = run_cli("chat", "--run", chat_run, "--temperature", "0", input="My name is Zorbu.\nCall me Kestrel.\n")
    assert piped.returncode == 0, piped.stderr
    replies = piped.stdout.splitlines()
    assert len(replies) == 2 and all(r.startswith("Nice to meet you, ") for r in replies)  # (a tiny model copies names roughly)
    as_json = run_cli("chat", "--run", chat_run, "--temperature", "0", "--json", input="My name is Zorbu.\n")
    talk = json.loads(as_json.stdout)
    assert talk["messages"] == [{"role": "user", "content": "My name is Zorbu."}, {"role": "assistant", "content": replies[0]}]
    with_system = json.loads(run_cli("chat", "--run", chat_run, "--json", "--system", "Be brief.", input="Hi\n").stdout)
    assert [m["role"] for m in with_system["messages"]] == ["system", "user", "assistant"]


def test_the_oldest_exchanges_go_when_the_history_outgrows_the_context(chat_run):
    model, ckpt = load_model(chat_run / "best.safetensors")
    talk = Conversation(model, ckpt.tokenizer)
    for name in ("Mira", "Bob", "Cyra", "Dov"):
        "".join(talk.reply(f"My name is {name}.", temperature=0))
    assert talk.dropped >= 2 and talk.history[-2]["content"] == "My name is Dov."
    assert len(prompt_ids(talk.messages(), ckpt.tokenizer)) <= model.config.block_size


def test_chat_refuses_a_run_that_was_not_trained_on_conversations(tiny_run, tinygpt):
    code, _, stderr = tinygpt("chat", "--run", tiny_run)
    assert_one_error(code, stderr, 1, "was not trained on conversations", hint="tinygpt prepare chat CHATS.jsonl --tokenizer")


@pytest.fixture(scope="module")
def bpe_chat_run(greetings, tmp_path_factory, torch_one_thread) -> Path:
    """A tiny model on the greetings with a 300-token BPE trained on them (296 and the 4 chat tokens), 30 steps."""
    root = tmp_path_factory.mktemp("bpe_chat_run")
    info = prepare_chat([str(greetings / "train.jsonl")], root / "data", "greet", TokenizerChoice("bpe", vocab_size=300), context=64).info
    assert info.vocab_size == 300 and chat_token_ids(load_dataset(root / "data").tokenizer) == {
        "<|system|>": 296, "<|user|>": 297, "<|assistant|>": 298, "<|end|>": 299}
    train_new(tiny_config(root / "data", **{**CHAT_MODEL, "max_iters": 30, "eval_interval": 30}), root / "run")
    return root / "run"


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_the_greedy_reply_of_chat_is_transformers_pipeline_reply_on_the_export(tokenizer, request, tmp_path, run_cli):
    transformers = pytest.importorskip("transformers")
    run = request.getfixturevalue("chat_run" if tokenizer == "char" else "bpe_chat_run")
    assert run_cli("export", tmp_path / "hf", "--run", run, "--to", "hf").returncode == 0
    assert (tmp_path / "hf" / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "hf"))
    model, ckpt = load_model(run / "best.safetensors")
    for question in ("My name is Zorbu.", "Hello! I'm Stavio.", "Who am I."):
        messages = [{"role": "user", "content": question}]
        ours = "".join(Conversation(model, ckpt.tokenizer).reply(question, temperature=0, max_tokens=40, room=40))
        theirs = generate(messages, max_new_tokens=40, do_sample=False)[0]["generated_text"][-1]["content"]
        assert ours == theirs
        ids = generate.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        assert (ids if isinstance(ids, list) else ids["input_ids"]) == prompt_ids(messages, ckpt.tokenizer)


# --- tasks -------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_textbook():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_task_eval_scores_exact_match_and_multiple_choice(chat_run, greetings, tmp_path, tinygpt):
    code, stdout, _ = tinygpt("eval", "--run", chat_run, "--task", greetings / "test.jsonl", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["total"] == 40 and result["kinds"] == {"choice": 0, "exact": 40}
    assert result["interval_95"][0] <= result["accuracy"] <= result["interval_95"][1]
    choices = [{"context": f"My name is {n}.", "choices": [f"Nice to meet you, {n}!", f"Nice to meet you, {o}!"], "label": 0}
               for n, o in (("Mira", "Bob"), ("Kestrel", "Moupo"), ("Zorbu", "Mira"))]
    code, stdout, _ = tinygpt("eval", "--run", chat_run, "--task", write_jsonl(tmp_path / "mc.jsonl", choices), "--json")
    assert json.loads(stdout)["accuracy"] == 1.0


@pytest.mark.parametrize("line, message", [("{oops", "not JSON"), ('{"choices": ["a"], "label": 0}', "at least two"),
                                           ('{"choices": ["a", "b"], "label": 2}', "the index of the right choice"),
                                           ('{"prompt": "x"}', "an \\\"answer\\\"")])
def test_a_bad_task_item_is_one_error_naming_its_line(line, message, chat_run, tmp_path, tinygpt):
    task = write_jsonl(tmp_path / "t.jsonl", ['{"prompt": "a", "answer": "b"}', line])
    code, _, stderr = tinygpt("eval", "--run", chat_run, "--task", task)
    assert_one_error(code, stderr, 2, f"{task}:2", message.replace("\\\"", '"'))


def test_a_training_window_trains_its_own_conversation_only(tmp_path):
    """Conversations far shorter than the context: a window reads on into the next ones, but
    trains the tokens of the one it starts with, predicted from its own start only."""
    from tinygpt_cli.data.batches import Batches

    records = [conversation(f"My name is {n}.", f"Hi {n}!") for n in ("Mira", "Bob", "Cyra", "Dov")] * 5
    prepare_chat([str(write_jsonl(tmp_path / "c.jsonl", records))], tmp_path / "data", "c", context=64)
    data = load_dataset(tmp_path / "data")
    x, y = Batches(data.train, 64, torch.device("cpu"), data.train_mask).sample(32, torch.Generator().manual_seed(0))
    end = chat_token_ids(data.tokenizer)["<|end|>"]
    for inputs, targets in zip(x.tolist(), y.tolist()):
        trained = [i for i, t in enumerate(targets) if t != -1]
        first_reply_end = trained[-1]
        assert targets[first_reply_end] == end and inputs.count(end) >= 2  # the window goes on past its conversation
        assert data.tokenizer.decode([targets[i] for i in trained]).startswith("Hi ") and data.tokenizer.decode(inputs[: first_reply_end + 1]).count("<|user|>") == 1


def test_content_that_spells_a_special_token_of_the_tokenizer_is_refused(tmp_path):
    records = [GOOD] * 10 + [conversation("a <|endoftext|> b", "c")]
    source = write_jsonl(tmp_path / "c.jsonl", records)
    with pytest.raises(TinyGPTError, match=rf"{source}:11: message 1 \(user\) spells the tokenizer's special token <\|endoftext\|>"):
        prepare_chat([str(source)], tmp_path / "data", "c", TokenizerChoice("bpe", vocab_size=300))


def test_a_stop_during_the_final_evaluation_leaves_a_finished_run_with_its_estimates(tmp_path, tiny_dataset):
    import os
    import signal

    from tinygpt_cli.lifecycle import TrainingReporter

    class StopInFinalEval(TrainingReporter):
        def on_final_eval(self, windows):
            return lambda n: os.kill(os.getpid(), signal.SIGINT)

    result = train_new(tiny_config(tiny_dataset), tmp_path / "run", StopInFinalEval())
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "finished" and "final_eval" not in status and result.final_eval is None
    assert load_checkpoint(tmp_path / "run" / "best.safetensors").progress.get("final_eval") is None


def test_the_conversations_slash_commands(chat_run, capsys):
    from tinygpt_cli.cli.chat_cmds import _command

    model, ckpt = load_model(chat_run / "best.safetensors")
    talk, settings = Conversation(model, ckpt.tokenizer), {"temperature": 0.8}
    "".join(talk.reply("My name is Bob.", temperature=0))
    _command("/system Be kind.", talk, settings)
    _command("/temperature 0", talk, settings)
    _command("/temperature hot", talk, settings)
    _command("/system say <|end|>", talk, settings)
    assert talk.system == "Be kind." and settings["temperature"] == 0.0 and len(talk.history) == 2
    _command("/reset", talk, settings)
    _command("/nope", talk, settings)
    assert talk.history == [] and talk.system == "Be kind."
    err = capsys.readouterr().err
    assert "/temperature 'hot'" in err and "spells the chat token <|end|>" in err and "no command /nope" in err
