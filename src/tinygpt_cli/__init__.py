"""tinygpt: build a small GPT from scratch, on characters or on a BPE trained on your text.

The names a Python user needs, importable from here (loaded lazily, so that the command line's
`--help` does not pay for importing torch):

    from tinygpt_cli import init_process, load_model, generate
    init_process()  # the command line's thread and memory settings: as fast as `tinygpt generate`
    model, ckpt = load_model("runs/demo/best.safetensors")
    ids = generate(model, ckpt.tokenizer.encode("ROMEO:"), 200, temperature=0.8, seed=1)
    print(ckpt.tokenizer.decode(ids))

`set_sampling_precision(model, "auto")` before `generate` stores the blocks' matrices in float16
on a CPU when they outgrow its cache, as `tinygpt generate` does.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # configuration
    "ModelConfig": "config", "TrainConfig": "config", "RunConfig": "config", "resolve_config": "config",
    "PRESETS": "config",
    # data
    "Vocabulary": "data.vocab", "BPETokenizer": "data.tokenizer", "byte_lengths": "data.tokenizer",
    "TokenizerChoice": "data.prepare", "prepare_shakespeare": "data.prepare", "prepare_text": "data.prepare",
    "load_dataset": "data.dataset",
    # model and checkpoints
    "GPT": "model", "KVCache": "model",
    "Checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "load_model": "checkpoint",
    # training, sampling, inspection
    "train_new": "lifecycle", "resume": "lifecycle", "TrainingReporter": "lifecycle",
    "generate": "sampling", "set_sampling_precision": "sampling",
    "param_report": "params", "score_split": "evaluate", "eval_dataset": "evaluate",
    # the settings of the whole process, as the command line sets them
    "init_process": "system.process",
    # other tools: transformers folders, pretrained weights
    "export_hf": "interop.export", "read_hf_folder": "interop.hf", "load_pretrained": "interop.pretrained",
    "TinyGPTError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
