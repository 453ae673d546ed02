"""tinygpt as a library: load a checkpoint, generate text, and compute the validation loss.

Usage: python examples/library.py RUN [DATA_DIR] [PROMPT]
       python examples/library.py runs/demo data/shakespeare "ROMEO:"
"""

from __future__ import annotations

import sys
from pathlib import Path

from tinygpt_cli import byte_lengths, eval_dataset, generate, init_process, load_model, score_split


def main(run: str, data_dir: str | None = None, prompt_text: str = "ROMEO:") -> None:
    init_process()  # the command line's settings for this process: its threads and memory, so its speed
    checkpoint = Path(run) / "best.safetensors"
    model, ckpt = load_model(checkpoint)
    print(f"loaded a {model.num_params():,}-parameter model trained for {ckpt.iteration} iterations")

    prompt = ckpt.tokenizer.encode(prompt_text)
    new_ids = list(generate(model, prompt, max_new_tokens=200, temperature=0.8, top_k=20, seed=1))
    print(ckpt.tokenizer.decode(prompt + new_ids))

    dataset = eval_dataset(ckpt, checkpoint, data_dir)  # the run's own dataset by default; refused if its tokenizer differs
    val = score_split(model, dataset.val, byte_lengths(dataset.tokenizer))
    print(f"validation loss {val.loss:.4f} nats/token, perplexity {val.perplexity:.2f}, {val.bits_per_byte:.3f} bits/byte")


if __name__ == "__main__":
    if not 1 <= len(sys.argv) - 1 <= 3:
        sys.exit(__doc__.strip())
    main(*sys.argv[1:])
