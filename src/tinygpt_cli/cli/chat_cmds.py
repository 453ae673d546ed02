"""`tinygpt chat`: talk with a model trained on conversations, its replies streamed."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .console import err, out, print_json, say_loaded
from .options import CHECKPOINT, DEVICE, JSON, RUN, SEED, TEMPERATURE, TOP_K, TOP_P

HELP = """/reset            forget the conversation (the system message stays)
/system TEXT      set the system message (/system alone removes it)
/temperature X    sampling temperature from now on (0: greedy)
/help             this list; Ctrl-C stops a reply, Ctrl-D leaves"""


def chat(
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    system: str = typer.Option(None, "--system", help="A system message that opens the conversation."),
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    seed: int = SEED,
    max_reply_tokens: int = typer.Option(None, "--max-reply-tokens", min=1, help="Tokens a reply may take at most (default: what the context leaves)."),
    device: str = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Talk with a model trained on conversations: one reply per message, the history kept.

    On a terminal, a conversation (/help lists its commands). Piped, one reply per line of
    standard input: echo "Hi, I'm Ada." | tinygpt chat --run runs/chat

    Example: tinygpt chat --run runs/chat --temperature 0
    """
    from ..checkpoint import load_model
    from ..conversation import Conversation
    from ..errors import Command, TinyGPTError
    from ..rundir import resolve_checkpoint
    from ..system.devices import pick_device
    from ..system.process import init_process

    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    if ckpt.chat_template is None:
        raise TinyGPTError(f"{path} was not trained on conversations: it continues text, it cannot answer",
                           Command("prepare chat", ("CHATS.jsonl",), {"tokenizer": str(run or path), "data_dir": "data/chat"},
                                   why=f"then: tinygpt train --init-from {run or path} --data-dir data/chat"))
    conversation = Conversation(model, ckpt.tokenizer, system)  # a system message it cannot read: refused first
    init_process()
    settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "max_tokens": max_reply_tokens}
    if sys.stdin.isatty() and not as_json:
        say_loaded(path, ckpt)
        _talk(conversation, settings)
        return
    # Piped: standard output holds the replies, standard error only what went wrong (one line).
    for n, line in enumerate(sys.stdin):
        if line.strip():
            reply = "".join(conversation.reply(line.rstrip("\n"), **{**settings, "seed": None if seed is None else seed + n}))
            if not as_json:
                print(reply, flush=True)
    if as_json:
        print_json({"checkpoint": str(path), "iteration": ckpt.iteration, "messages": conversation.messages(),
                    "dropped_exchanges": conversation.dropped, "settings": settings})


def _talk(conversation, settings: dict) -> None:
    """The conversation on a terminal: a prompt, a streamed reply, slash commands."""
    from ..errors import TinyGPTError

    block = conversation.model.config.block_size
    out.print(f"a conversation in a context of {block:,} tokens: /help for commands, Ctrl-D to leave", markup=False)
    while True:
        try:
            text = input("you> ")
        except EOFError:
            out.print()
            return
        except KeyboardInterrupt:
            out.print()
            continue
        if text.startswith("/"):
            _command(text, conversation, settings)
            continue
        if not text.strip():
            continue
        dropped = conversation.dropped
        sys.stdout.write("model> ")
        try:
            for piece in conversation.reply(text, **settings):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        except TinyGPTError as e:
            sys.stdout.write("\n")
            err.print(f"Error: {e.message}", markup=False, soft_wrap=True)
            continue
        sys.stdout.write("\n")
        if conversation.dropped > dropped:
            n = conversation.dropped - dropped
            err.print(f"(the oldest {n} exchange{'s' * (n > 1)} no longer fit the context of {block:,} tokens: dropped)", markup=False)


def _command(text: str, conversation, settings: dict) -> None:
    from ..errors import TinyGPTError

    name, _, arg = text.partition(" ")
    if name == "/reset":
        conversation.reset()
        out.print("(the conversation starts again)", markup=False)
    elif name == "/system":
        try:
            conversation.set_system(arg)
        except TinyGPTError as e:
            err.print(f"Error: {e.message}", markup=False, soft_wrap=True)
            return
        out.print(f"(system message {'set' if conversation.system else 'removed'})", markup=False)
    elif name == "/temperature":
        try:
            value = float(arg)
            if not 0 <= value < float("inf"):
                raise ValueError
        except ValueError:
            err.print(f"Error: /temperature {arg!r}: give a number of 0 or more", markup=False)
            return
        settings["temperature"] = value
        out.print(f"(temperature {value:g})", markup=False)
    elif name == "/help":
        out.print(HELP, markup=False)
    else:
        err.print(f"Error: no command {name}: /help lists them", markup=False)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
