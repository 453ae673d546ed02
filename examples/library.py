"""tinygpt as a library: load a checkpoint, generate text, and compute the validation loss.

Usage: python examples/library.py runs/demo [data/shakespeare] [PROMPT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tinygpt_cli import byte_lengths, generate, load_dataset, load_model, score_split


def main(run: str, data_dir: str = "data/shakespeare", prompt_text: str = "ROMEO:") -> None:
    model, ckpt = load_model(Path(run) / "best.safetensors")
    print(f"loaded a {model.num_params():,}-parameter model trained for {ckpt.iteration} iterations")

    prompt = ckpt.tokenizer.encode(prompt_text)
    new_ids = list(generate(model, prompt, max_new_tokens=200, temperature=0.8, top_k=20, seed=1))
    print(ckpt.tokenizer.decode(prompt + new_ids))

    dataset = load_dataset(data_dir)
    assert dataset.tokenizer == ckpt.tokenizer, "the dataset and the model must share a tokenizer"
    val = score_split(model, dataset.val, byte_lengths(dataset.tokenizer))
    print(f"validation loss {val.loss:.4f} nats/token, perplexity {val.perplexity:.2f}, {val.bits_per_byte:.3f} bits/byte")


if __name__ == "__main__":
    main(*sys.argv[1:])
