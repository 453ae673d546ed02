"""`train --init-from`: fine-tune from a tinygpt run, a transformers GPT-2 folder or a hub id.

The GPT-2 tests run offline on a tiny randomly initialised GPT-2 that transformers itself saves.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from conftest import TINY_MODEL, assert_error_output, hint, make_text, tiny_cli_flags, tiny_config

from tinygpt_cli.checkpoint import load_model
from tinygpt_cli.errors import TinyGPTError, UsageError
from tinygpt_cli.lifecycle import train_new
from tinygpt_cli.model import GPT
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.interop.pretrained import load_pretrained, tokenizer_choice
from tinygpt_cli.rundir import RunDir
from tinygpt_cli.data.tokenizer import BPETokenizer

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A GPT-2 folder as transformers saves one: random weights (biases too), GPT-2's
    activation (gelu_new), and a byte-level BPE tokenizer."""
    folder = tmp_path_factory.mktemp("gpt2")
    tokenizer = BPETokenizer.train([make_text(20_000, seed=5)], 300)
    config = transformers.GPT2Config(vocab_size=tokenizer.size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases and LayerNorm off their zero / one start
    model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return folder


def fine_tune_config(data_dir, source, **overrides):
    """tiny_config's schedule, with the shape left to `source`."""
    shape_from_source = {k: None for k in TINY_MODEL if k != "dropout"}
    return tiny_config(data_dir, **{**shape_from_source, "init_from": str(source), **overrides})


def prepare_with(source, text_path, data_dir):
    prepare_text(text_path, data_dir, "ft", 0.1, tokenizer_choice(str(source), None))
    return data_dir


def test_a_gpt2_folder_loads_with_the_same_logits(tiny_gpt2):
    pretrained = load_pretrained(str(tiny_gpt2))
    assert pretrained.config.activation == "gelu_tanh" and pretrained.config.bias
    ours = GPT(pretrained.config).eval()
    ours.load_state_dict(pretrained.weights, strict=False)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
    batch = torch.randint(0, pretrained.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(batch, batch)[0], theirs(batch).logits, atol=1e-5, rtol=0)


def test_gpt2_fine_tunes_and_exports_back(tiny_gpt2, tmp_path, run_cli, torch_one_thread):
    text = tmp_path / "new.txt"
    text.write_text(make_text(20_000, seed=9), encoding="utf-8")
    data = prepare_with(tiny_gpt2, text, tmp_path / "data")
    run = tmp_path / "run"
    train_new(fine_tune_config(data, tiny_gpt2, block_size=32, max_iters=10, eval_interval=5), run)
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["init_from"] == str(tiny_gpt2)
    source = load_pretrained(str(tiny_gpt2)).config.model_dump()
    assert saved["model"] == {**source, "block_size": 32}  # the context shortened: the first 32 learned positions

    exported = tmp_path / "hf"
    done = run_cli("export", exported, "--checkpoint", run / "last.safetensors", "--to", "hf")
    assert done.returncode == 0, done.stderr
    assert "fine-tuned from" in (exported / "README.md").read_text(encoding="utf-8")
    ours, _ = load_model(run / "last.safetensors")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    batch = torch.randint(0, ours.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(theirs(batch).logits, ours(batch, batch)[0], atol=1e-5, rtol=0)


def test_fine_tuning_a_run_starts_from_its_weights(tiny_run, tmp_path, torch_one_thread):
    text = tmp_path / "new.txt"
    text.write_text(make_text(20_000, seed=31), encoding="utf-8")
    data = prepare_with(tiny_run, text, tmp_path / "data")  # the run's own character vocabulary
    first_val = {}
    for name, init in (("scratch", None), ("tuned", str(tiny_run))):
        config = fine_tune_config(data, init) if init else tiny_config(data)
        train_new(config.model_copy(update={"train": config.train.model_copy(update={"max_iters": 5, "eval_interval": 5})}), tmp_path / name)
        first_val[name] = RunDir(tmp_path / name).read_metrics()[0]["val_loss"]
    # The source learned these characters' statistics: it starts far below a random model's ln(vocab).
    assert first_val["tuned"] < first_val["scratch"] - 0.3 and first_val["scratch"] > math.log(20) - 0.5


def test_a_dataset_with_another_tokenizer_is_one_error(tiny_gpt2, tiny_dataset, tmp_path):
    with pytest.raises(TinyGPTError) as e:
        train_new(fine_tune_config(tiny_dataset, tiny_gpt2), tmp_path / "run")
    assert "another tokenizer" in e.value.message
    assert f"prepare text INPUT --tokenizer {tiny_gpt2} --data-dir {tiny_dataset}" in hint(e.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--n-layer", "3"], "--n-layer: the model's shape comes from --init-from"),
    (["--block-size", "128"], "--block-size 128"),
    (["--init-from", "../no/such/run"], "--init-from ../no/such/run: no run, checkpoint or transformers folder there"),
    (["--init-from", "no such/id"], "not a hub id"),
])
def test_shape_flags_and_bad_sources_are_refused(flags, message, tiny_gpt2, tiny_dataset, run_cli, tmp_path):
    args = tiny_cli_flags(tiny_dataset, **{k: None for k in TINY_MODEL if k != "dropout"}) + ["--init-from", str(tiny_gpt2)]
    done = run_cli("train", *args, *flags, "--out", tmp_path / "run")
    assert done.returncode == 2
    assert_error_output(done.stderr, message)
    assert not (tmp_path / "run").exists()


def test_a_hub_id_offline_and_not_cached_is_one_error(tiny_dataset, run_cli, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    done = run_cli("train", *tiny_cli_flags(tiny_dataset, **{k: None for k in TINY_MODEL if k != "dropout"}),
                   "--init-from", "gpt2", "--out", tmp_path / "run", env=env)
    assert done.returncode == 1
    assert_error_output(done.stderr, "gpt2 is not in the local Hugging Face cache", hint="--local-dir")


def test_openai_gpt2s_tensor_names_without_the_transformer_prefix_load_too(tiny_gpt2, tmp_path):
    """The hub's own gpt2 stores "h.0.attn.c_attn.weight", where save_pretrained writes
    "transformer.h.0.attn.c_attn.weight"."""
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    shutil.copytree(tiny_gpt2, bare)
    tensors = load_file(bare / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, bare / "model.safetensors")
    saved, read = load_pretrained(str(tiny_gpt2)), load_pretrained(str(bare))
    assert saved.weights.keys() == read.weights.keys()
    assert all(torch.equal(saved.weights[k], read.weights[k]) for k in saved.weights)


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(UsageError) as e:
        load_pretrained("runs/cpu2")
    assert e.value.message == "--init-from runs/cpu2: no run, checkpoint or transformers folder there"


def test_a_hub_id_reads_the_folder_the_hub_gives(tiny_gpt2, monkeypatch):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, allow_patterns: asked.append(repo) or str(tiny_gpt2))
    assert load_pretrained("someone/tiny-gpt2").config.n_layer == 2 and asked == ["someone/tiny-gpt2"]
    assert tokenizer_choice("someone/tiny-gpt2", None).given == load_pretrained(str(tiny_gpt2)).tokenizer
    with pytest.raises(UsageError):
        load_pretrained("no such/id")
