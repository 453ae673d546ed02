"""Process-wide state has one place (system/process.py:init_process): a library call leaves the
process as it found it (random generators, threads, the model's mode, signal handlers), and a
training neither reads nor moves anybody else's random numbers."""

from __future__ import annotations

import signal
import sys
import threading

import pytest
import torch
from conftest import REPO, cli_env, tiny_config

from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.evaluate import token_losses
from tinygpt_cli.inside.measure import attention, predict
from tinygpt_cli.lifecycle import train_new
from tinygpt_cli.sampling import generate
from tinygpt_cli.train import Trainer

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_sampling_between_two_training_steps_leaves_the_next_loss_as_it_was(tiny_dataset):
    """Dropout draws from torch's default generator: a sample, a look inside or the caller's own
    draws between two steps must not shift it."""
    config = tiny_config(tiny_dataset, dropout=0.2)
    dataset = load_dataset(tiny_dataset)
    alone, interrupted = Trainer(config, dataset), Trainer(config, dataset)
    assert alone.train_step().item() == interrupted.train_step().item()
    model = interrupted.model
    list(generate(model, [1, 2, 3], 20))  # unseeded: it must not reseed torch
    list(generate(model, [1, 2, 3], 20, seed=5))
    attention(model, [1, 2, 3]), predict(model, [1, 2, 3], 0.8, None, None), token_losses(model, dataset.val[:40])
    torch.rand(7), torch.randn(3)  # the caller's own draws
    assert model.training  # each of them gave the model back in the mode it found it in
    assert alone.train_step().item() == interrupted.train_step().item()


def test_a_training_neither_reads_nor_moves_the_callers_random_numbers(tiny_dataset, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    train_new(tiny_config(tiny_dataset, dropout=0.1), tmp_path / "run")
    assert torch.equal(torch.rand(5), expected)
    assert torch.get_num_threads() == threads  # no thread policy was handed to it


def test_a_training_runs_off_the_main_thread_and_leaves_the_signal_handlers_alone(tiny_dataset, tmp_path):
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    failures = []

    def run():
        try:
            train_new(tiny_config(tiny_dataset), tmp_path / "run")
        except BaseException as e:  # noqa: BLE001 (reported below, in the test's thread)
            failures.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(120)
    assert not worker.is_alive() and failures == []
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_init_process_is_what_sets_the_process_wide_settings():
    """A fresh interpreter: importing and using the library sets nothing; init_process does."""
    code = (
        "import torch, tinygpt_cli\n"
        "before = (torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads())\n"
        "from tinygpt_cli.model import GPT\n"
        "from tinygpt_cli.config import ModelConfig\n"
        "GPT(ModelConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8))\n"
        "assert (torch.backends.cuda.matmul.allow_tf32, torch.get_num_threads()) == before, before\n"
        "policy = tinygpt_cli.init_process()\n"
        "assert torch.backends.cuda.matmul.allow_tf32 and policy.describe()\n"
        "print('ok')\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
