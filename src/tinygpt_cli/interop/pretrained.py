"""Weights to start training from (`train --init-from SOURCE`) instead of random ones.

A source is a tinygpt run folder or checkpoint, a transformers GPT-2 or GPT-NeoX folder (as
`export` writes one, or as the hub holds GPT-2), or a Hugging Face hub id such as `gpt2`, which
is downloaded once into the hub's cache (huggingface_hub; offline, the cache alone is read).

The model's shape comes from the source. The context may be shortened (`--block-size`), as
nanoGPT crops GPT-2's 1024 positions: learned positions keep their first rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import SHAPE_FIELDS, ModelConfig, RunConfig, flag_name
from ..errors import Command, TinyGPTError, UsageError
from ..data.prepare import BPE_SAMPLE_CHARS, TokenizerChoice
from ..data.tokenizer import Tokenizer, check_bpe_vocab_size

# A hub id: a name, or owner/name (letters, digits, '-', '_', '.').
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]


@dataclass
class Pretrained:
    source: str  # as the user named it
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def _is_hf_folder(path: Path) -> bool:
    """A transformers folder holds config.json or tokenizer.json; a run folder has checkpoints."""
    return path.is_dir() and any((path / name).is_file() for name in ("config.json", "tokenizer.json")) \
        and not any((path / name).exists() for name in ("run.json", "last.safetensors", "best.safetensors"))


def _one_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def download_from_hub(hub_id: str, files: list[str] = HUB_FILES) -> Path:
    """The folder of `hub_id` in the local hub cache, its `files` downloaded first when online."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise TinyGPTError(f"{hub_id}: a hub id needs huggingface_hub", "pip install 'tinygpt[hf]'") from e
    try:
        return Path(snapshot_download(hub_id, allow_patterns=files))
    except LocalEntryNotFoundError as e:
        raise TinyGPTError(f"{hub_id} is not in the local Hugging Face cache and cannot be downloaded now (offline?)",
                           f"on a machine online, run: hf download {hub_id} --local-dir FOLDER, copy FOLDER here "
                           f"and pass it instead of {hub_id}") from e
    except Exception as e:  # HTTP errors, timeouts, proxies: the library's and httpx's own types
        raise TinyGPTError(f"cannot download {hub_id} from the Hugging Face hub: {_one_line(e)}",
                           "check the id (https://huggingface.co/models), or pass a local folder") from e


def locate(source: str, flag: str, what: str) -> tuple[str, Any]:
    """What `source` names, as `--init-from` and `--tokenizer` read it: ("transformers", folder),
    ("checkpoint", file: a run's best, else its last), ("tokenizer", file) or ("hub", id)."""
    from ..rundir import resolve_checkpoint

    path = Path(source)
    if _is_hf_folder(path):
        return "transformers", path
    if path.is_dir():
        return "checkpoint", resolve_checkpoint(run=path)
    if path.is_file():
        return ("checkpoint" if path.suffix == ".safetensors" else "tokenizer"), path
    # "runs/cpu2" where runs/ exists is a mistyped path, not a hub id.
    local = source.startswith((".", "/", "~")) or ("/" in source and Path(source.split("/")[0]).is_dir())
    if local or not HUB_ID.fullmatch(source):
        raise UsageError(f"{flag} {source}: no {what} there{'' if local else ', and not a hub id'}",
                         "pass a run folder, a .safetensors checkpoint, a transformers folder or a hub id such as gpt2")
    return "hub", source


def source_tokenizer(source: str) -> Tokenizer:
    """The tokenizer of a tokenizer.json, a run, a checkpoint, a transformers folder or a hub
    model (`prepare text --tokenizer SOURCE`), without reading any weights."""
    from ..checkpoint import read_metadata
    from .hf import read_tokenizer_json
    from ..data.tokenizer import tokenizer_from_dict

    kind, where = locate(source, "--tokenizer", "tokenizer file, run, checkpoint or transformers folder")
    if kind == "checkpoint":
        return tokenizer_from_dict(read_metadata(where)["vocab"], str(where))
    if kind == "tokenizer":
        return read_tokenizer_json(where)
    if kind == "hub":
        try:
            where = download_from_hub(source, ["tokenizer.json", "tokenizer_config.json"])
        except TinyGPTError as e:  # most often a typo of char or bpe
            raise UsageError(f"--tokenizer {source}: not char, not bpe, no file or folder there, and no hub model: {e.message}",
                             "pass --tokenizer char, --tokenizer bpe, a tokenizer.json, a run, or a transformers folder") from e
    return read_tokenizer_json(where / "tokenizer.json")


def chat_context(source: str, choice: TokenizerChoice) -> int:
    """The tokens a conversation may take when `prepare chat` is not told: the context of the
    model whose tokenizer it takes, else data/prepare_chat.py's default."""
    from ..data.prepare_chat import DEFAULT_CONTEXT

    return (source_context(source) if choice.kind == "given" else None) or DEFAULT_CONTEXT


def source_context(source: str) -> int | None:
    """The context (block size) of the model a `--tokenizer SOURCE` names: a run, a checkpoint or
    a transformers folder; None for a tokenizer file or a hub id (read without its weights)."""
    from ..checkpoint import read_metadata
    from .hf import MAX_CONFIG_BYTES, model_config_from_hf

    kind, where = locate(source, "--tokenizer", "tokenizer file, run, checkpoint or transformers folder")
    if kind == "checkpoint":
        return int(read_metadata(where)["model_config_json"]["block_size"])
    if kind == "transformers" and (where / "config.json").is_file():
        from ..system.fsutil import read_user_file, parse_json

        return model_config_from_hf(parse_json(read_user_file(where / "config.json", MAX_CONFIG_BYTES), where / "config.json"), str(where)).block_size
    return None


def tokenizer_choice(value: str, vocab_size: int | None, sample_chars: int = BPE_SAMPLE_CHARS) -> TokenizerChoice:
    """How `--tokenizer char|bpe|SOURCE` and `--vocab-size N` (BPE only) ask prepare to make the
    tokenizer; a SOURCE is read here, without any weights (source_tokenizer)."""
    if value == "char":
        if vocab_size is not None:
            raise UsageError("--vocab-size is for --tokenizer bpe: a character vocabulary is every character of the text")
        return TokenizerChoice()
    if value == "bpe":
        size = 4096 if vocab_size is None else vocab_size
        check_bpe_vocab_size(size)
        return TokenizerChoice("bpe", vocab_size=size, sample_chars=sample_chars)
    if vocab_size is not None:
        raise UsageError("--vocab-size is for --tokenizer bpe: a given tokenizer has its own size")
    return TokenizerChoice("given", given=source_tokenizer(value))


def load_pretrained(source: str) -> Pretrained:
    """Read `source` (see the module docstring) as our config, weights and tokenizer."""
    from ..checkpoint import load_checkpoint
    from .hf import read_hf_folder

    kind, where = locate(source, "--init-from", "run, checkpoint or transformers folder")
    if kind == "checkpoint":
        ckpt = load_checkpoint(where)
        return Pretrained(source, ckpt.model_config, ckpt.weights, ckpt.tokenizer)
    if kind == "tokenizer":
        raise UsageError(f"--init-from {source}: a tokenizer file holds no weights", "pass a run, a checkpoint or a transformers folder")
    hf = read_hf_folder(download_from_hub(where) if kind == "hub" else where)
    return Pretrained(source, hf.config, hf.weights, hf.tokenizer)


def fit_config(config: RunConfig, pretrained: Pretrained) -> RunConfig:
    """`config` with the source's shape. A shape setting chosen explicitly (a flag, a config
    file: ModelConfig.model_fields_set) must agree with it, except a shorter context."""
    source = pretrained.config
    chosen = config.model.model_fields_set
    changed = [f for f in SHAPE_FIELDS if f in chosen and f != "block_size" and getattr(config.model, f) != getattr(source, f)]
    if changed:
        raise UsageError(f"{', '.join(map(flag_name, changed))}: the model's shape comes from --init-from {pretrained.source}",
                         "leave out the shape flags (only --block-size may shorten the context)")
    block_size = config.model.block_size if "block_size" in chosen else source.block_size
    if source.pos_embedding == "learned" and block_size > source.block_size:
        raise UsageError(f"--block-size {block_size}: {pretrained.source} has learned positions for "
                         f"{source.block_size} tokens at most", f"pass --block-size {source.block_size} or less")
    model = source.model_copy(update={"block_size": block_size, "dropout": config.model.dropout})
    return RunConfig(model=model, train=config.train)


def check_tokenizer(dataset_tokenizer: Tokenizer, pretrained: Pretrained, data_dir: str) -> None:
    """The dataset must be tokenized as the source was, or be its conversations (the source's
    tokenizer with the chat tokens after its own: data/chat.py)."""
    from ..data.chat import with_chat_tokens

    if dataset_tokenizer != pretrained.tokenizer and dataset_tokenizer != with_chat_tokens(pretrained.tokenizer):
        raise TinyGPTError(f"the dataset in {data_dir} was prepared with another tokenizer than {pretrained.source}'s",
                           Command("prepare text", ("INPUT",), {"tokenizer": pretrained.source, "data_dir": data_dir},
                                   why="prepares your text with its tokenizer"))


def initial_weights(pretrained: Pretrained, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The source's weights for a model of `config`: learned positions cut to its context, and the
    token embedding (the tied LM head with it) grown by the rows of tokens the source lacks (the
    chat tokens of a conversation dataset).

    A new row starts as the mean of the source's rows. Its logit is then the average token's for
    any input, so the model's first predictions are those of the source, barely changed, and the
    new token is neither a near-certainty nor impossible; random rows of the init's scale would
    sit far from every trained row and shift the next-token distribution unpredictably (Hewitt
    2021, "Initializing New Word Embeddings for Pretrained Language Models")."""
    weights = dict(pretrained.weights)
    if "pos_emb.weight" in weights:
        weights["pos_emb.weight"] = weights["pos_emb.weight"][: config.block_size].clone()
    rows = weights["tok_emb.weight"]
    if config.vocab_size > rows.shape[0]:
        new = rows.mean(dim=0, keepdim=True).expand(config.vocab_size - rows.shape[0], -1)
        weights["tok_emb.weight"] = torch.cat([rows, new])
    return weights
