"""Task evaluation (`tinygpt eval --task FILE.jsonl`): how often a model answers right.

A task file holds one item per line, of two kinds, told apart by their fields:
- multiple choice, `{"context": str, "choices": [str, ...], "label": int}`: the model picks the
  choice it finds least surprising per byte after the context (the lowest loss per byte of the
  choice's tokens), as HellaSwag is scored, and nanochat's CORE with it;
- exact match, `{"prompt": str, "answer": str}` or `{"messages": [...], "answer": str}`: the
  model's greedy continuation (up to the end of its turn, or a text model's end of line) must be
  the answer once both are normalised: runs of white space as one space, the ends stripped,
  case folded.
A model trained on conversations is asked through its chat format: a prompt or a context is the
user's message, a choice the assistant's reply. A text model reads messages as their contents, a
line each, and answers on the next line: so a model can be scored before and after it is
fine-tuned on conversations. The accuracy comes with a 95% Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.chat import END_OF_TURN, chat_token_ids, check_messages, prompt_ids
from .data.tokenizer import Tokenizer, byte_lengths
from .errors import Command, UsageError
from .model import GPT, eval_mode
from .sampling import generate
from .system.fsutil import parse_json, read_user_file

MAX_TASK_BYTES = 256 * 2**20


@dataclass
class TaskItem:
    where: str  # file:line
    answer: str | None = None  # exact match
    prompt: str | None = None
    messages: list | None = None
    context: str | None = None  # multiple choice
    choices: list[str] = field(default_factory=list)
    label: int = 0

    @property
    def kind(self) -> str:
        return "exact" if self.answer is not None else "choice"


@dataclass
class TaskResult:
    correct: int
    total: int
    kinds: dict[str, int]  # items of each kind
    answers: list[dict]  # per item: where, what the model answered, right or not

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion: sound at 0% and 100%, where p ± 2σ is not."""
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def read_task(path: Path) -> list[TaskItem]:
    """The items of a task file, each checked; a bad one is a UsageError naming `file:line`."""
    text = read_user_file(path, MAX_TASK_BYTES, "task file").decode("utf-8", errors="replace")
    items = [_item(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not items:
        raise UsageError(f"{path} holds no task item", Command("eval", ("--help",), why="one JSON object per line, as it describes"))
    return items


def _item(line: str, where: str) -> TaskItem:
    try:
        record = parse_json(line, where)
    except ValueError as e:
        raise UsageError(str(e)) from e
    if not isinstance(record, dict):
        raise UsageError(f"{where}: not a JSON object")
    if "choices" in record:
        choices, label, context = record.get("choices"), record.get("label"), record.get("context", "")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UsageError(f"{where}: \"choices\" must be a list of at least two non-empty strings")
        if type(label) is not int or not 0 <= label < len(choices):
            raise UsageError(f"{where}: \"label\" must be the index of the right choice, 0 to {len(choices) - 1}")
        if not isinstance(context, str):
            raise UsageError(f"{where}: \"context\" must be a string")
        return TaskItem(where, context=context, choices=choices, label=label)
    answer = record.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise UsageError(f"{where}: an item needs \"choices\" and \"label\", or an \"answer\" (a non-empty string)")
    if "messages" in record:
        messages = check_messages(record["messages"], where, complete=False)
        if messages[-1]["role"] != "user":
            raise UsageError(f"{where}: the last message is the assistant's: a question to answer ends with the user's")
        return TaskItem(where, answer=answer, messages=messages)
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise UsageError(f"{where}: an exact-match item needs a \"prompt\" or \"messages\" to answer")
    return TaskItem(where, answer=answer, prompt=prompt)


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


class TaskRunner:
    """Asks one model the items of a task: chat models through their format."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, chat: bool):
        """`chat`: the model was trained on conversations (its checkpoint has a chat template)."""
        self.model, self.tokenizer = model, tokenizer
        self.chat = chat_token_ids(tokenizer) if chat else None
        self.token_bytes = byte_lengths(tokenizer)

    def run(self, items: list[TaskItem], progress: Callable[[int], None] | None = None) -> TaskResult:
        answers = []
        for item in items:
            try:
                answers.append(self.exact(item) if item.kind == "exact" else self.choice(item))
            except UsageError as e:  # a character the vocabulary lacks, a chat token spelled...
                raise UsageError(e.message if e.message.startswith(item.where) else f"{item.where}: {e.message}", e.hint) from e
            if progress is not None:
                progress(1)
        kinds = {k: sum(i.kind == k for i in items) for k in ("choice", "exact")}
        return TaskResult(sum(a["right"] for a in answers), len(items), kinds, answers)

    def _ask(self, text: str | None, messages: list | None = None) -> list[int]:
        """The ids that ask the model: the chat format's prompt, or a text model's plain text."""
        if self.chat is not None:
            return prompt_ids(messages or [{"role": "user", "content": text}], self.tokenizer)
        if messages is not None:  # a text model: the messages' contents, a line each, and the answer on the next
            text = "".join(m["content"] + "\n" for m in messages)
        # A text model's context starts on a new line: an empty one still predicts the first token of a choice.
        return self.tokenizer.encode("\n" + text if not text else text)

    def exact(self, item: TaskItem) -> dict:
        ids = self._ask(item.prompt, item.messages)
        block = self.model.config.block_size
        if len(ids) >= block:
            raise UsageError(f"{item.where}: the prompt is {len(ids):,} tokens, the model reads {block:,}")
        budget = min(block - len(ids), 2 * len(item.answer.encode("utf-8")) + 8)  # (never fewer bytes than tokens)
        stop = self.chat[END_OF_TURN] if self.chat is not None else None
        out: list[int] = []
        for token in generate(self.model, ids, budget, temperature=0.0):
            if token == stop:
                break
            out.append(token)
            if stop is None and "\n" in self.tokenizer.decode(out):  # a text model's answer is one line
                break
        said = self.tokenizer.decode(out).split("\n")[0] if stop is None else self.tokenizer.decode(out)
        return {"where": item.where, "answer": said, "right": normalise(said) == normalise(item.answer)}

    @torch.no_grad()
    def choice(self, item: TaskItem) -> dict:
        context = self._ask(item.context)
        per_byte = []
        for choice in item.choices:
            tail = self.tokenizer.encode(choice) + ([self.chat[END_OF_TURN]] if self.chat is not None else [])
            ids = (context + tail)[-(self.model.config.block_size + 1):]
            scored = tail[-(len(ids) - 1):]  # the choice's tokens that have a token before them in the window
            x = torch.tensor(ids[:-1], device=next(self.model.parameters()).device)[None]
            y = torch.tensor(ids[1:], device=x.device)[None]
            with eval_mode(self.model):
                logits, _ = self.model(x, y)
            losses = F.cross_entropy(logits[0].float(), y[0], reduction="none")[-len(scored):]
            n_bytes = max(1, int(self.token_bytes[np.array(scored)].sum()))
            per_byte.append(float(losses.sum()) / n_bytes)
        picked = int(np.argmin(per_byte))
        return {"where": item.where, "answer": item.choices[picked], "right": picked == item.label}
