"""`tinygpt generate`: write text with a trained model, streamed as it comes."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .console import out, print_json, say_loaded
from .options import CHECKPOINT, DEVICE, JSON, RUN, SEED, TEMPERATURE, TOP_K, TOP_P

# generate's loops are the user's to size, within these (a typo of a few zeros is no hour-long run).
MAX_SAMPLES = 1000
MAX_NEW_TOKENS = 1_000_000


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    from ..data.dataset import decode_text, read_source
    from ..errors import UsageError

    if prompt is not None and prompt_file is not None:
        raise UsageError("pass either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        return decode_text(read_source(str(prompt_file)), str(prompt_file))
    return prompt or ""


def generate(
    prompt: str = typer.Option(None, "--prompt", help="Text to continue (empty: start from a newline)."),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="Read the prompt from a UTF-8 file."),
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    max_new_tokens: int = typer.Option(500, "--max-new-tokens", min=0, max=MAX_NEW_TOKENS, help=f"Tokens to generate per sample (characters for a character vocabulary; at most {MAX_NEW_TOKENS:,})."),
    temperature: float = TEMPERATURE,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    num_samples: int = typer.Option(1, "--num-samples", min=1, max=MAX_SAMPLES, help=f"How many independent samples (at most {MAX_SAMPLES:,})."),
    seed: int = SEED,
    device: str = DEVICE,
    kv_cache: bool = typer.Option(True, "--kv-cache/--no-kv-cache", help="Reuse past keys/values (fast); off recomputes each window."),
    as_json: bool = JSON,
    dtype: str = typer.Option("auto", "--dtype", help="Weights for sampling: auto (on a CPU, float16 when the model outgrows the CPU's cache: about twice as fast, text may differ slightly; float32 otherwise), float32 (exactly the checkpoint), float16 or bfloat16."),
) -> None:
    """Write text with a trained model, streamed as it is produced.

    Example: tinygpt generate --prompt "ROMEO:" --max-new-tokens 300 --seed 1
    """
    from ..checkpoint import load_model
    from ..system.devices import pick_device
    from ..rundir import resolve_checkpoint
    from ..sampling import generate as generate_ids
    from ..sampling import set_sampling_precision
    from ..data.tokenizer import stream_text
    from ..system.process import init_process

    text = _read_prompt(prompt, prompt_file) or "\n"
    path = resolve_checkpoint(run, checkpoint)
    model, ckpt = load_model(path, pick_device(device))
    chosen = set_sampling_precision(model, dtype)
    prompt_ids = ckpt.tokenizer.encode(text)  # unknown characters: a one-line error, exit 2
    say_loaded(path, ckpt)
    threads = init_process()

    def sample(i: int):
        """The text of sample i (seed + i), as its tokens come: whole characters only."""
        def tokens():
            for token in generate_ids(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                      top_p=top_p, seed=None if seed is None else seed + i, kv_cache=kv_cache):
                threads.adjust()  # fewer threads while other processes want the cores
                yield token

        return stream_text(ckpt.tokenizer, tokens())

    if as_json:  # whole samples, then one JSON object: the text and what made it
        samples = ["".join(sample(i)) for i in range(num_samples)]
        print_json({"checkpoint": str(path), "iteration": ckpt.iteration, "prompt": text, "samples": samples,
                    "settings": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                                 "seed": seed, "kv_cache": kv_cache, "dtype": str(chosen).removeprefix("torch.")}})
        return
    interactive = sys.stdout.isatty()
    for i in range(num_samples):
        if i:
            if interactive:
                out.rule(f"sample {i + 1}")
            else:
                sys.stdout.write(f"\n---------- sample {i + 1} ----------\n")
        sys.stdout.write(text)
        for char in sample(i):
            sys.stdout.write(char)
            if interactive:
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
