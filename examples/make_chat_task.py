"""A synthetic conversation task that a tiny model learns on a CPU in minutes: greet the user by
the name they give. The reply depends on the question (the name must be copied from it), so a
fixed answer scores nothing, and the names of the held-out questions never occur in training.

    python examples/make_chat_task.py --out chats         # chats/train.jsonl and chats/test.jsonl
    tinygpt prepare chat chats/train.jsonl --tokenizer runs/cpu --data-dir data/greet
    tinygpt train --preset cpu --init-from runs/cpu --data-dir data/greet --out runs/greet
    tinygpt eval --run runs/greet --task chats/test.jsonl

train.jsonl holds conversations ({"messages": [...]}); test.jsonl holds exact-match task items
({"messages": [the user's turn], "answer": the reply}). Standard library only: the names are
made of letters that tiny Shakespeare has, so its character vocabulary encodes every one.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ASKS = ["My name is {}.", "Hi, I am {}.", "Hello! I'm {}.", "Call me {}.", "I am {}, hello.", "Good morrow, I am {}."]
REPLY = "Nice to meet you, {}!"
ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch", "st", "th"]
VOWELS = ["a", "e", "i", "o", "u", "y", "ae", "ou"]


def name(rng: random.Random) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(rng.randint(1, 3))).capitalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("chats"), help="folder to write train.jsonl and test.jsonl to")
    parser.add_argument("--train", type=int, default=4000, help="training conversations")
    parser.add_argument("--test", type=int, default=200, help="held-out questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < args.train + args.test:  # every name once: the held-out ones are new
        n = name(rng)
        if n not in seen:
            seen.add(n)
            names.append(n)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train.jsonl", "w", encoding="utf-8") as f:
        for n in names[: args.train]:
            turns = [{"role": "user", "content": rng.choice(ASKS).format(n)}, {"role": "assistant", "content": REPLY.format(n)}]
            f.write(json.dumps({"messages": turns}) + "\n")
    with open(args.out / "test.jsonl", "w", encoding="utf-8") as f:
        for n in names[args.train :]:
            f.write(json.dumps({"messages": [{"role": "user", "content": rng.choice(ASKS).format(n)}], "answer": REPLY.format(n)}) + "\n")
    print(f"wrote {args.train:,} conversations to {args.out / 'train.jsonl'} and {args.test:,} questions to {args.out / 'test.jsonl'}")


if __name__ == "__main__":
    main()
