"""Hugging Face transformers folders: a tinygpt model written as one, and read back from one.

A GPT with learned positions is GPT-2 (`GPT2LMHeadModel`); one with rotary positions is
GPT-NeoX (`GPTNeoXForCausalLM`) with sequential residuals (`use_parallel_residual: false`) and
rotary embeddings on the whole head (`partial_rotary_factor: 1`), which computes the same
function. Both keep LayerNorm with a bias and a bias on every linear layer: a model trained
without biases is written with zero biases. What neither expresses (RMSNorm, QK-norm) is refused.

Nothing here imports transformers: the folder is config.json, model.safetensors, the tokenizer
files and a model card, written with safetensors and json. tests/test_hf.py loads them in
transformers and checks that both compute the same logits and the same greedy text.

Layouts, from transformers' `modeling_gpt2.py` and `modeling_gpt_neox.py`:
- GPT-2's linear layers are `Conv1D`, whose weight is stored (in, out): ours transposed;
- GPT-NeoX's fused qkv rows go head by head, [q_h, k_h, v_h] for each head h, where ours hold
  all the q rows, then all the k rows, then all the v rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from ..config import ModelConfig, first_problem
from ..errors import TinyGPTError, UsageError
from ..model import weight_shapes
from ..system.fsutil import parse_json, read_user_file
from ..data.tokenizer import EOT, MAX_TOKENIZER_FILE_BYTES, BPETokenizer, Tokenizer
from ..data.vocab import Vocabulary
from ..data.chat import END_OF_TURN, chat_token_ids

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which our model uses
ROPE_BASE = 10000.0  # model.rope_tables' default
ARCHITECTURES = {"learned": "gpt2", "rope": "gpt_neox"}  # our pos_embedding -> model_type
CLASS_NAMES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
# Our activation -> the name transformers' ACT2FN gives the same function.
ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu2": "relu2"}
# ... and back; gelu_new is GPT-2's own spelling of the tanh approximation.
ACTIVATIONS_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu2": "relu2"}
WEIGHTS_FILE = "model.safetensors"
MAX_CONFIG_BYTES = 2**20  # a config.json is a few hundred bytes


@dataclass
class HFModel:
    """A model read from a transformers folder, in tinygpt's terms."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]  # our names, float32
    tokenizer: Tokenizer


# --- the name map ------------------------------------------------------------------------
def _hf_name(model_type: str, ours: str) -> tuple[str, str]:
    """transformers' name for our tensor `ours`, and how its values are laid out there:
    "same", "transposed" (GPT-2's Conv1D) or "heads" (GPT-NeoX's per-head qkv rows)."""
    parts = ours.split(".")
    if model_type == "gpt2":
        top = {"tok_emb": "transformer.wte", "pos_emb": "transformer.wpe", "ln_f": "transformer.ln_f"}
        inner = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj",
                 "ln_1": "ln_1", "ln_2": "ln_2"}
        prefix = "transformer.h"
    else:
        top = {"tok_emb": "gpt_neox.embed_in", "ln_f": "gpt_neox.final_layer_norm"}
        inner = {"attn.qkv": "attention.query_key_value", "attn.proj": "attention.dense", "mlp.up": "mlp.dense_h_to_4h",
                 "mlp.down": "mlp.dense_4h_to_h", "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}
        prefix = "gpt_neox.layers"
    if parts[0] != "blocks":
        return f"{top[parts[0]]}.{parts[-1]}", "same"
    module = ".".join(parts[2:-1])
    name = f"{prefix}.{parts[1]}.{inner[module]}.{parts[-1]}"
    if model_type == "gpt2" and module.startswith(("attn.", "mlp.")) and parts[-1] == "weight":
        return name, "transposed"
    if model_type == "gpt_neox" and module == "attn.qkv":
        return name, "heads"
    return name, "same"


def _to_heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """qkv rows [q heads | k heads | v heads] -> [q_h, k_h, v_h] head after head (dim 0)."""
    return t.reshape(3, n_head, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _from_heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    return t.reshape(n_head, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _with_biases(config: ModelConfig) -> ModelConfig:
    return config.model_copy(update={"bias": True})


# --- writing -----------------------------------------------------------------------------
def refused_options(config: ModelConfig) -> list[str]:
    """The flags of `config` that neither GPT-2 nor GPT-NeoX in transformers can express."""
    refused = []
    if config.norm != "layernorm":
        refused.append(f"--norm {config.norm}")
    if config.qk_norm:
        refused.append("--qk-norm")
    return refused


def check_exportable(config: ModelConfig) -> None:
    refused = refused_options(config)
    if refused:
        raise UsageError(f"this model uses {', '.join(refused)}, which neither GPT-2 nor GPT-NeoX in transformers "
                         "can express: it cannot be exported as a transformers model",
                         "train without it to export (the classic GPT-2 recipe: --preset cpu-classic)")


def hf_tensors(config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names and layouts; a bias we do not train is zeros."""
    check_exportable(config)
    model_type = ARCHITECTURES[config.pos_embedding]
    out = {}
    for ours, shape in weight_shapes(_with_biases(config)).items():
        name, layout = _hf_name(model_type, ours)
        t = weights[ours].float() if ours in weights else torch.zeros(shape)
        if layout == "transposed":
            t = t.t()
        elif layout == "heads":
            t = _to_heads(t, config.n_head)
        out[name] = t.contiguous()
    return out


def hf_config(config: ModelConfig, tokenizer: Tokenizer, chat: bool = False) -> dict[str, Any]:
    """config.json for transformers (the same dropout as training; the model loads in eval mode).
    `chat`: a model trained on conversations, whose sequences end with the end of a turn."""
    check_exportable(config)
    model_type = ARCHITECTURES[config.pos_embedding]
    eot = tokenizer.eot_id
    eos = chat_token_ids(tokenizer)[END_OF_TURN] if chat else eot
    common = {"architectures": [CLASS_NAMES[model_type]], "model_type": model_type, "vocab_size": config.vocab_size,
              "bos_token_id": eot, "eos_token_id": eos, "tie_word_embeddings": True, "dtype": "float32"}
    if model_type == "gpt2":
        return {**common, "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
                "n_head": config.n_head, "n_inner": 4 * config.n_embd, "activation_function": ACTIVATIONS[config.activation],
                "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
                "layer_norm_epsilon": LAYER_NORM_EPS, "scale_attn_weights": True}
    return {**common, "max_position_embeddings": config.block_size, "hidden_size": config.n_embd,
            "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
            "intermediate_size": 4 * config.n_embd, "hidden_act": ACTIVATIONS[config.activation],
            "hidden_dropout": config.dropout, "attention_dropout": config.dropout, "layer_norm_eps": LAYER_NORM_EPS,
            "use_parallel_residual": False, "attention_bias": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_BASE, "partial_rotary_factor": 1.0},
            # The same, as transformers before 5.0 reads it.
            "rotary_pct": 1.0, "rotary_emb_base": ROPE_BASE}


def char_tokenizer_json(vocab: Vocabulary) -> str:
    """A character vocabulary as a tokenizer.json: every character its own token (a BPE model
    with no merges), decoded by joining. Characters outside the vocabulary are dropped."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from tokenizers import AddedToken

    hf = Tokenizer(models.BPE({ch: i for i, ch in enumerate(vocab.chars)}, [], unk_token=None))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in vocab.specials])  # ids after the characters
    return hf.to_str()


def tokenizer_files(tokenizer: Tokenizer, block_size: int, chat_template: str | None = None) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json, which AutoTokenizer loads as a fast tokenizer;
    for a model trained on conversations, its chat template (in tokenizer_config.json and as
    chat_template.jinja, where transformers looks for it) and generation_config.json, whose end
    of sequence is the end of a turn: `pipeline` with messages then replies as `tinygpt chat` does."""
    text = tokenizer.to_json() if isinstance(tokenizer, BPETokenizer) else char_tokenizer_json(tokenizer)
    settings: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
                                "clean_up_tokenization_spaces": False}
    if tokenizer.eot_id is not None:
        settings |= {"bos_token": EOT, "eos_token": EOT}
    files = {"tokenizer.json": text}
    chat = chat_token_ids(tokenizer)
    if chat_template is not None and chat is not None:
        settings |= {"eos_token": END_OF_TURN, "pad_token": END_OF_TURN, "chat_template": chat_template}
        generation = {"eos_token_id": chat[END_OF_TURN], "pad_token_id": chat[END_OF_TURN]}
        files |= {"chat_template.jinja": chat_template, "generation_config.json": json.dumps(generation, indent=2) + "\n"}
    return files | {"tokenizer_config.json": json.dumps(settings, indent=2) + "\n"}


# --- reading -----------------------------------------------------------------------------
def read_tokenizer_json(path: Path) -> Tokenizer:
    """A tokenizer.json: a byte-level BPE, or a character vocabulary as char_tokenizer_json
    writes one."""
    raw = read_user_file(path, MAX_TOKENIZER_FILE_BYTES, "tokenizer file")
    try:
        spec = parse_json(raw, path)
    except ValueError as e:
        raise UsageError(str(e), "pass a tokenizer.json: a Hugging Face tokenizer file") from e
    model = spec.get("model") if isinstance(spec, dict) else None
    decoder = spec.get("decoder") if isinstance(spec, dict) else None
    if isinstance(model, dict) and model.get("merges") == [] and isinstance(decoder, dict) and decoder.get("type") == "Fuse":
        return _char_vocabulary(model.get("vocab"), spec.get("added_tokens"), path)
    return BPETokenizer.from_json(raw.decode("utf-8", errors="replace"), str(path))


def _char_vocabulary(vocab: Any, added: Any, path: Path) -> Vocabulary:
    """The vocabulary of a tokenizer.json as char_tokenizer_json writes one: single characters,
    their ids 0 to N-1 in code-point order (the ids tinygpt's Vocabulary gives them), then its
    special tokens, if any, in the ids after them."""
    problem = UsageError(f"{path} is not a character tokenizer tinygpt reads: its vocabulary must map single characters to "
                         "the ids 0 to N-1 in code-point order", "pass a byte-level BPE tokenizer.json, or the export tinygpt wrote")
    if not isinstance(vocab, dict) or any(type(i) is not int for i in vocab.values()) or sorted(vocab.values()) != list(range(len(vocab))):
        raise problem
    added = added if isinstance(added, list) else []
    if not all(isinstance(t, dict) and type(t.get("id")) is int and isinstance(t.get("content"), str) for t in added) \
            or sorted(t["id"] for t in added) != list(range(len(vocab), len(vocab) + len(added))):
        raise problem
    try:
        return Vocabulary(tuple(sorted(vocab, key=vocab.__getitem__)), tuple(t["content"] for t in sorted(added, key=lambda t: t["id"])))
    except (ValueError, TinyGPTError) as e:
        raise problem from e


def _value(hf: dict, key: str, kind: type, source: str) -> Any:
    value = hf.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise TinyGPTError(f"{source}: config.json has no usable {key!r}")
    return value


def model_config_from_hf(hf: Any, source: str) -> ModelConfig:
    """Our ModelConfig for a GPT-2 or GPT-NeoX config.json, or one line on what does not fit."""
    if not isinstance(hf, dict):
        raise TinyGPTError(f"{source}: config.json is not a JSON object")
    model_type = hf.get("model_type")
    if not isinstance(model_type, str) or model_type not in CLASS_NAMES:
        raise TinyGPTError(f"{source} holds a {model_type if isinstance(model_type, str) and model_type else 'unknown'} model; "
                           "tinygpt reads gpt2 and gpt_neox models")
    gpt2 = model_type == "gpt2"
    keys = (("n_embd", "n_layer", "n_head", "n_positions", "activation_function", "layer_norm_epsilon") if gpt2 else
            ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps"))
    width, layers, heads, positions = (_value(hf, k, int, source) for k in keys[:4])
    activation = ACTIVATIONS_FROM_HF.get(hf[keys[4]]) if isinstance(hf.get(keys[4]), str) else None
    inner = hf.get("n_inner") if gpt2 else hf.get("intermediate_size")
    problems = []
    if activation is None:
        problems.append(f"activation {hf.get(keys[4])!r}")
    if inner not in (None, 4 * width):
        problems.append(f"an MLP of {inner} (tinygpt's is 4 x {width})")
    eps = hf.get(keys[5], LAYER_NORM_EPS)
    if not isinstance(eps, (int, float)) or abs(eps - LAYER_NORM_EPS) > 1e-12:
        problems.append(f"LayerNorm epsilon {eps!r}")
    if not hf.get("tie_word_embeddings", True):
        problems.append("an output layer apart from the token embedding")
    if gpt2 and (hf.get("scale_attn_by_inverse_layer_idx") or hf.get("add_cross_attention")
                 or not hf.get("scale_attn_weights", True)):
        problems.append("attention scaled otherwise or cross-attention")
    if not gpt2:
        rope = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
        theta = rope.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", ROPE_BASE)))
        if hf.get("use_parallel_residual", True):
            problems.append("parallel residuals")
        if rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)) != 1.0 or theta != ROPE_BASE:
            problems.append("rotary embeddings on part of each head or another base")
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            problems.append("scaled rotary embeddings")
    if problems:
        raise TinyGPTError(f"{source} is a {model_type} model that tinygpt's GPT cannot compute: {', '.join(problems)}")
    try:
        return ModelConfig(vocab_size=_value(hf, "vocab_size", int, source), block_size=positions, n_layer=layers,
                           n_head=heads, n_embd=width, dropout=0.0, bias=True, activation=activation,
                           pos_embedding="learned" if gpt2 else "rope")
    except ValidationError as e:
        raise TinyGPTError(f"{source}: config.json describes a model tinygpt cannot build: {first_problem(e, 'config')}") from e


def read_hf_folder(folder: Path) -> HFModel:
    """A GPT-2 or GPT-NeoX folder (config.json, model.safetensors, tokenizer.json) in our terms.
    A model whose every bias is zero (as we export one trained without) comes back without."""
    from safetensors import safe_open

    source = str(folder)
    raw = read_user_file(folder / "config.json", MAX_CONFIG_BYTES, "transformers config.json")
    try:
        hf = parse_json(raw, folder / "config.json")
    except ValueError as e:
        raise TinyGPTError(str(e), "pass a transformers folder with the config.json that save_pretrained writes") from e
    config = model_config_from_hf(hf, source)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise TinyGPTError(f"{folder} has no {WEIGHTS_FILE} (tinygpt reads no pickled pytorch_model.bin)",
                           "convert it to safetensors with transformers: model.save_pretrained(folder)")
    tokenizer = read_tokenizer_json(folder / "tokenizer.json")
    if tokenizer.size != config.vocab_size:
        raise TinyGPTError(f"{folder}: its tokenizer has {tokenizer.size:,} tokens for a model of {config.vocab_size:,}")
    weights = {}
    model_type = hf["model_type"]
    try:
        with safe_open(str(weights_path), "pt") as f:
            stored = set(f.keys())
            for ours, shape in weight_shapes(config).items():
                name, layout = _hf_name(model_type, ours)
                bare = name.split(".", 1)[1]  # OpenAI's GPT-2 on the hub: "h.0...", not "transformer.h.0..."
                if name not in stored and bare not in stored:
                    raise TinyGPTError(f"{weights_path} has no tensor {name}")
                t = f.get_tensor(name if name in stored else bare).float()
                if layout == "transposed":
                    t = t.t()
                elif layout == "heads":
                    t = _from_heads(t, config.n_head)
                if tuple(t.shape) != shape:
                    raise TinyGPTError(f"{weights_path}: {name} is {tuple(t.shape)}, where the config needs {shape}")
                weights[ours] = t.contiguous()
    except TinyGPTError:
        raise
    except Exception as e:  # a file the safetensors library refuses
        raise TinyGPTError(f"{weights_path} is not a readable safetensors file: {e}") from e
    if all(not t.any() for name, t in weights.items() if name.endswith(".bias")):
        config = config.model_copy(update={"bias": False})
        weights = {name: t for name, t in weights.items() if not name.endswith(".bias")}
    return HFModel(config, weights, tokenizer)
