"""Export to Hugging Face transformers: the exported model computes what tinygpt's computes.

For every preset's architecture (at tiny sizes), transformers' logits equal ours within 1e-5 in
float32, and its greedy decoding of 200 tokens equals ours token for token.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_MODEL, assert_error_output, hint

from tinygpt_cli.checkpoint import Checkpoint, model_weights
from tinygpt_cli.config import MODEL_FIELDS, PRESETS, ModelConfig
from tinygpt_cli.errors import TinyGPTError, UsageError
from tinygpt_cli.interop.export import CHAT_EXPORT_FILES, EXPORT_FILES, export_hf
from tinygpt_cli.interop.hf import hf_config, model_config_from_hf, read_hf_folder
from tinygpt_cli.model import GPT
from tinygpt_cli.interop.pretrained import tokenizer_choice
from tinygpt_cli.sampling import generate
from tinygpt_cli.data.tokenizer import BPETokenizer
from tinygpt_cli.data.vocab import Vocabulary

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")

TEXT = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: Ay me!\n" * 4
GREEDY_TOKENS = 200
# The architecture of each preset (its model settings), at a tiny size with room for the prompt
# and 200 new tokens, and the remaining model options, so that every option meets transformers.
ARCHITECTURES = {
    **{name: {k: v for k, v in values.items() if k in MODEL_FIELDS} for name, values in PRESETS.items()},
    "bias-relu2": dict(bias=True, activation="relu2"),
    "rope-bias-gelu_tanh": dict(pos_embedding="rope", bias=True, activation="gelu_tanh"),
}


def tiny_model(vocab_size: int, **options) -> GPT:
    """A tiny GPT with large random weights: its logits spread widely, so that a greedy choice
    never hangs on a near tie (as they would at the usual 0.02 init)."""
    config = ModelConfig(**{**TINY_MODEL, **options, "vocab_size": vocab_size, "block_size": 256, "dropout": 0.0})
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def export(model: GPT, tokenizer, folder) -> None:
    ckpt = Checkpoint("best", model.config, tokenizer, 7, model_weights(model), val_loss=1.5, best_val_loss=1.5,
                      train_config={"data_dir": "data/tiny"}, progress={"val_bytes_per_token": 1.0})
    export_hf(ckpt, folder / "best.safetensors", folder, "tinygpt train --n-layer 2")


@pytest.fixture(scope="module")
def char_vocab() -> Vocabulary:
    return Vocabulary.from_text(TEXT)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_transformers_computes_the_same_logits_and_greedy_text(name, char_vocab, tmp_path, torch_one_thread):
    model = tiny_model(char_vocab.size, **ARCHITECTURES[name])
    export(model, char_vocab, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected = {"learned": "GPT2LMHeadModel", "rope": "GPTNeoXForCausalLM"}[model.config.pos_embedding]
    assert type(hf).__name__ == expected

    batch = torch.randint(0, char_vocab.size, (4, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(batch, batch)
        theirs = hf(batch).logits
    assert ours.std() > 0.5  # spread out: a tie could not hide a difference
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)

    prompt = char_vocab.encode("ROMEO:")
    our_tokens = list(generate(model, prompt, GREEDY_TOKENS, temperature=0))
    their_tokens = hf.generate(torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                               min_new_tokens=GREEDY_TOKENS)[0, len(prompt):].tolist()
    assert their_tokens == our_tokens


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_pipeline_runs_end_to_end_with_the_exported_tokenizer(kind, char_vocab, tmp_path, torch_one_thread):
    tokenizer = char_vocab if kind == "char" else BPETokenizer.train([TEXT], 300)
    model = tiny_model(tokenizer.size)
    export(model, tokenizer, tmp_path)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tokenizer("JULIET: Ay").input_ids == tokenizer.encode("JULIET: Ay")
    generator = transformers.pipeline("text-generation", model=str(tmp_path), device="cpu")
    text = generator("JULIET:", max_new_tokens=30, min_new_tokens=30, do_sample=False)[0]["generated_text"]
    ours = tokenizer.decode(list(generate(model, tokenizer.encode("JULIET:"), 30, temperature=0)))
    assert text == "JULIET:" + ours


@pytest.mark.parametrize("options", [dict(bias=False), dict(bias=True, pos_embedding="rope", activation="relu2")])
def test_an_export_reads_back_as_the_same_model(options, char_vocab, tmp_path):
    model = tiny_model(char_vocab.size, **options)
    export(model, char_vocab, tmp_path)
    back = read_hf_folder(tmp_path)
    assert back.config == model.config and back.tokenizer == char_vocab
    assert tokenizer_choice(str(tmp_path / "tokenizer.json"), None).given == char_vocab  # prepare --tokenizer
    weights = model_weights(model)
    assert back.weights.keys() == weights.keys()
    for name, t in weights.items():
        assert torch.equal(back.weights[name], t), name


@pytest.mark.parametrize("change, problem", [
    (dict(model_type="gpt2", scale_attn_weights=False), "attention scaled otherwise"),
    (dict(model_type="gpt2", activation_function="silu"), "activation 'silu'"),
    (dict(model_type="gpt2", layer_norm_epsilon=None), "LayerNorm epsilon None"),
    (dict(model_type="gpt_neox", use_parallel_residual=True), "parallel residuals"),
    (dict(model_type="gpt_neox", rope_scaling={"rope_type": "linear", "factor": 2.0}), "scaled rotary embeddings"),
    (dict(model_type="gpt_neox", rope_theta=500000.0), "another base"),
    (dict(model_type="llama"), "tinygpt reads gpt2 and gpt_neox models"),
])
def test_a_transformers_config_tinygpt_cannot_compute_is_one_line(change, problem, char_vocab, tmp_path):
    model = tiny_model(char_vocab.size, pos_embedding="rope" if change["model_type"] == "gpt_neox" else "learned")
    config = {**hf_config(model.config, char_vocab), **change}
    if change["model_type"] == "gpt_neox":
        config.pop("rope_parameters")  # as transformers before 5 wrote it, so that the flat keys count
    with pytest.raises(TinyGPTError) as e:
        model_config_from_hf(config, "folder")
    assert problem in e.value.message and "\n" not in e.value.message
    with pytest.raises(TinyGPTError):
        model_config_from_hf(["not", "an", "object"], "folder")


def test_the_model_card_says_what_the_model_is(char_vocab, tmp_path):
    export(tiny_model(char_vocab.size), char_vocab, tmp_path)
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "library_name: transformers" in card
    for fact in ("GPT2LMHeadModel", "val loss 1.5000", "2.1640 bits per byte", "data/tiny", "tinygpt train --n-layer 2"):
        assert fact in card
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(EXPORT_FILES) - set(CHAT_EXPORT_FILES))  # a text model: no chat template


@pytest.mark.parametrize("options, flag", [(dict(norm="rmsnorm"), "--norm rmsnorm"), (dict(qk_norm=True), "--qk-norm")])
def test_what_transformers_cannot_express_is_refused_by_name(options, flag, char_vocab, tmp_path):
    with pytest.raises(UsageError) as e:
        export(tiny_model(char_vocab.size, **options), char_vocab, tmp_path / "out")
    assert flag in e.value.message and "cpu-classic" in hint(e.value)
    assert not (tmp_path / "out").exists()


def test_export_command_writes_a_folder_and_never_touches_others(tiny_run, tmp_path, run_cli):
    out = tmp_path / "hf"
    done = run_cli("export", out, "--run", tiny_run, "--to", "hf", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["architecture"] == "GPTNeoXForCausalLM" and summary["checkpoint"].endswith("best.safetensors")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == TINY_MODEL["n_layer"]
    assert "--pos-embedding rope" in (out / "README.md").read_text(encoding="utf-8")

    again = run_cli("export", out, "--run", tiny_run, "--to", "hf")
    assert again.returncode == 2
    assert_error_output(again.stderr, "already holds an export", hint="--overwrite")
    assert run_cli("export", out, "--checkpoint", tiny_run / "last.safetensors", "--to", "hf", "--overwrite").returncode == 0
    assert "(last)" in (out / "README.md").read_text(encoding="utf-8")

    (out / "notes.txt").write_text("mine")
    refused = run_cli("export", out, "--run", tiny_run, "--to", "hf", "--overwrite")
    assert refused.returncode == 2 and (out / "notes.txt").read_text() == "mine"
    assert_error_output(refused.stderr, "not an export's", "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no staging folder left behind

    wrong = run_cli("export", tmp_path / "x", "--run", tiny_run, "--to", "onnx")
    assert wrong.returncode == 2
    assert_error_output(wrong.stderr, "--to onnx", hint="--to hf")
