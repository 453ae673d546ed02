"""Untrusted files: a checkpoint from anywhere gives a one-line error or a correct result, never a
crash, a hang or a large allocation; nothing in a run folder changes before a resume is known to
be possible; files that are not ours (FIFOs, devices, other people's) are never blocked on,
read whole, or overwritten."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD_ENV, as_format_1, assert_error_output, cli_env, hint, rewrite_checkpoint, tiny_cli_flags, tiny_config
from safetensors import safe_open

from tinygpt_cli.checkpoint import load_checkpoint, read_metadata
import tinygpt_cli.data.dataset as data_module
from tinygpt_cli.data.dataset import load_dataset
from tinygpt_cli.data.prepare import prepare_text
from tinygpt_cli.errors import CheckpointError, TinyGPTError
from tinygpt_cli.lifecycle import resume, train_new

TESTS = Path(__file__).resolve().parent
# Address space for the fuzzing process: torch itself maps about 0.7 GB; a checkpoint that made
# tinygpt allocate what its file does not hold (the 7.3 GB) fails under this limit.
FUZZ_MEMORY_LIMIT = 2 * 2**30
# Mutations each of which the fuzzer's run must answer with an error from every command.
ALWAYS_REFUSED = ("claims_a_big_model", "changed_n_head", "changed_norm", "changed_activation", "vocab_bit_flip",
                  "negative_iteration", "rng_data_missing", "deeply_nested", "train_config_out_of_range", "sparse_20gb")


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (FUZZ_MEMORY_LIMIT, FUZZ_MEMORY_LIMIT))


@pytest.mark.parametrize("seed, count", [(0, 20), (1, 100), (2, 100)])
def test_fuzzed_checkpoints_give_one_error_line_or_a_correct_result(tiny_run, tiny_dataset, tmp_path, seed, count):
    """Seed 0 also runs the hand-made cases of the hostile-input sweep (checkpoint_fuzz.crafted)."""
    proc = subprocess.run(
        [sys.executable, str(TESTS / "checkpoint_fuzz.py"), str(tiny_run), str(tiny_dataset), str(tmp_path), str(seed), str(count)],
        env=cli_env(ONE_THREAD_ENV), capture_output=True, text=True, timeout=600, preexec_fn=_limit_memory,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # a segfault or an escaped MemoryError ends here
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) >= 4 * count
    for r in results:
        context = json.dumps(r, indent=1)
        assert r["code"] in (0, 1, 2), context
        if r["code"]:
            assert_error_output(r["stderr"], context=context)
        elif r["changed"] and not r["recomputed"] and r["command"] != "resume":
            assert r["same_output"], context  # loaded despite damage: only if it changed nothing that matters
        if r["mutation"].removesuffix(".safetensors") in ALWAYS_REFUSED:
            assert r["code"] == 1, context
    refused_resumes = {r["mutation"] for r in results if r["command"] == "resume" and r["code"]}
    if seed == 0:
        assert {"optim_wrong_shape.safetensors", "optim_step_in_the_future.safetensors", "nan_weights.safetensors"} <= refused_resumes


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _wrong_moment(tensors):
    name = sorted(k for k in tensors if k.endswith(".exp_avg"))[0]
    tensors[name] = torch.zeros(tensors[name].numel() + 7)


@pytest.mark.parametrize("damage", [
    dict(change_tensors=_wrong_moment),
    dict(change_meta=lambda m: m.update(iteration="-5")),
    dict(change_meta=lambda m: m.update(rng_python=json.dumps([3, [1] * 624 + [625], 1.5]))),  # position past the state
    dict(change_tensors=lambda t: t.pop("rng.data")),
    dict(change_tensors=lambda t: t.update({"rng.torch": torch.zeros_like(t["rng.torch"])})),  # right size, invalid state
    dict(change_meta=lambda m: m.update(progress=json.dumps({"elapsed": "soon"}))),
], ids=["optimizer-moment-shape", "negative-iteration", "python-rng", "rng-data-missing", "rng-torch-content", "progress-type"])
def test_a_refused_resume_changes_nothing_in_the_run_folder(tiny_run, tmp_path, damage, torch_one_thread):
    run = copy_run(tiny_run, tmp_path / "run")
    rewrite_checkpoint(run / "last.safetensors", **damage)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError) as info:
        resume(run, {"max_iters": 60, "learning_rate": 1e-3})  # overrides: config.json would be rewritten
    assert "\n" not in info.value.message and str(run / "last.safetensors") in info.value.message
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}


def test_saved_optimizer_settings_give_way_to_the_runs_config(tiny_run, tmp_path, torch_one_thread):
    run = copy_run(tiny_run, tmp_path / "run")

    def odd_groups(meta):
        groups = json.loads(meta["optimizer_param_groups"])
        for group in groups:
            group.pop("eps", None)  # a key the optimizer needs at every step
            group["weight_decay"] = 5.0
        meta["optimizer_param_groups"] = json.dumps(groups)

    rewrite_checkpoint(run / "last.safetensors", change_meta=odd_groups)
    assert resume(run, {"max_iters": 32}).iteration == 32  # no KeyError inside a step
    configured = json.loads((run / "config.json").read_text())["train"]["weight_decay"]
    saved = json.loads(safe_open(str(run / "last.safetensors"), "pt").metadata()["optimizer_param_groups"])
    assert all("eps" in g and g["weight_decay"] in (0.0, configured) for g in saved)  # vectors: never decayed


def test_one_flipped_bit_in_the_metadata_is_detected(tiny_run, tmp_path):
    path = tmp_path / "best.safetensors"
    raw = bytearray((tiny_run / "best.safetensors").read_bytes())
    where = raw.index(b'\\"a\\"')  # the vocabulary's "a", JSON inside JSON
    raw[where + 2] ^= 0x01  # "a" -> "`"
    path.write_bytes(bytes(raw))
    for loader in (read_metadata, load_checkpoint):
        with pytest.raises(CheckpointError, match="metadata does not match the stored digest"):
            loader(path)


def test_a_format_1_checkpoint_still_loads_and_says_its_metadata_is_not_covered(tiny_run, tmp_path, run_cli):
    path = tmp_path / "old.safetensors"
    shutil.copy(tiny_run / "best.safetensors", path)
    rewrite_checkpoint(path, change_meta=as_format_1, recompute=False)
    ckpt = load_checkpoint(path)
    assert not ckpt.metadata_covered and ckpt.iteration == load_checkpoint(tiny_run / "best.safetensors").iteration
    proc = run_cli("generate", "--checkpoint", path, "--max-new-tokens", "5", "--seed", "1", env=ONE_THREAD_ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"loaded {path} (iteration ")  # which file was read, on stderr
    assert "format 1" in proc.stderr and "not covered" in proc.stderr


@pytest.mark.parametrize("args", [
    ["generate", "--checkpoint", "{fifo}"],
    ["generate", "--checkpoint", "/dev/zero"],
    ["generate", "--checkpoint", "{run}/best.safetensors", "--prompt-file", "{fifo}"],
    ["params", "--checkpoint", "{fifo}"],
    ["train", "--config", "{fifo}"],
    ["train", "--config", "/dev/zero"],
    ["prepare", "text", "{fifo}", "--data-dir", "{tmp}/d"],
    ["vocab", "{fifo}"],
], ids=["generate-fifo", "generate-dev-zero", "prompt-fifo", "params-fifo", "config-fifo", "config-dev-zero",
        "prepare-fifo", "vocab-fifo"])
def test_fifos_and_devices_never_hang_or_read_without_end(tiny_run, tmp_path, run_cli, args):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer, ever: a blocking open would wait forever
    values = {"fifo": fifo, "run": tiny_run, "tmp": tmp_path}
    proc = run_cli(*[a.format(**values) for a in args], timeout=60, env=ONE_THREAD_ENV)
    assert proc.returncode in (1, 2), proc.stderr
    assert_error_output(proc.stderr)


# --- the user's own files ----------------------------------------------------------------------

def test_overwrite_refuses_a_folder_holding_the_users_files_and_names_them(tiny_run, tiny_dataset, tmp_path, run_cli):
    folder = tmp_path / "thatfolder"
    folder.mkdir()
    shutil.copy(tiny_run / "best.safetensors", folder)
    (folder / "important").mkdir()
    (folder / "important" / "notes.txt").write_text("years of notes")
    (folder / "mydata.csv").write_text("a,b\n1,2\n")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    proc = run_cli("train", *tiny_cli_flags(tiny_dataset, max_iters=4), "--out", folder, "--overwrite", env=ONE_THREAD_ENV)
    assert proc.returncode == 2
    assert_error_output(proc.stderr)
    assert "important/" in proc.stderr and "mydata.csv" in proc.stderr
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / "important" / "notes.txt").read_text() == "years of notes"


def test_overwrite_removes_the_previous_runs_files_only(tiny_run, tiny_dataset, tmp_path, torch_one_thread):
    folder = copy_run(tiny_run, tmp_path / "run")
    (folder / ".last.safetensors.k3j_x9.tmp").write_bytes(b"half a save")
    (folder / "loss.png").write_bytes(b"png")
    train_new(tiny_config(tiny_dataset, max_iters=4, eval_interval=2), folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "best.safetensors", "config.json", "last.safetensors",
                                                        "metrics.jsonl", "run.json"]
    assert load_checkpoint(folder / "last.safetensors").iteration == 4


def test_prepare_never_overwrites_a_folder_it_did_not_make(small_text, tmp_path, run_cli):
    folder = tmp_path / "d"
    folder.mkdir()
    corpus = "the user's own corpus, the only copy\n" * 200
    (folder / "input.txt").write_text(corpus)
    proc = run_cli("prepare", "text", small_text, "--data-dir", folder)
    assert proc.returncode == 2 and "input.txt" in proc.stderr
    assert_error_output(proc.stderr)
    assert (folder / "input.txt").read_text() == corpus and sorted(os.listdir(folder)) == ["input.txt"]


def test_prepare_again_clears_what_a_killed_prepare_left(small_text, tmp_path):
    folder = tmp_path / "d"
    prepare_text(small_text, folder, "d", 0.1)
    (folder / "meta.json").unlink()  # killed midway: meta.json goes first and comes back last
    (folder / ".train.bin.abc_12.tmp").write_bytes(bytes(1000))
    (folder / "notes.txt").write_text("the user's notes, in a folder tinygpt made")
    assert not prepare_text(small_text, folder, "d", 0.2).reused
    assert load_dataset(folder).info.val_fraction == 0.2
    assert sorted(os.listdir(folder)) == [".tinygpt-dataset", "meta.json", "notes.txt", "train.bin", "val.bin", "vocab.json"]


def test_a_dataset_that_cannot_be_read_says_permission_denied(small_text, tmp_path, monkeypatch):
    folder = tmp_path / "d"
    prepare_text(small_text, folder, "d", 0.1)
    real_digest = data_module.file_sha256

    def file_sha256(path):  # another user's file, mode 0600 (root reads it anyway: simulated)
        if Path(path).name == "train.bin":
            raise PermissionError(13, "Permission denied", str(path))
        return real_digest(path)

    monkeypatch.setattr(data_module, "file_sha256", file_sha256)
    with pytest.raises(TinyGPTError, match="train.bin: permission denied"):
        load_dataset(folder)


# --- memory and the status a run leaves --------------------------------------------------------

def test_a_batch_whose_activations_cannot_fit_is_refused_before_training(tiny_dataset, tmp_path):
    from tinygpt_cli.train import build_model

    config = tiny_config(tiny_dataset, batch_size=4096, block_size=4096)
    with pytest.raises(TinyGPTError) as info:
        build_model(config, torch.device("cpu"))
    assert "activations" in info.value.message and "--batch-size" in hint(info.value)
    build_model(tiny_config(tiny_dataset), torch.device("cpu"))  # the usual tiny batch passes


@pytest.mark.parametrize("error, status", [(RuntimeError("a bug deep in a step"), "failed"), (KeyboardInterrupt(), "aborted")])
def test_any_exit_from_training_leaves_a_status_that_tells_the_truth(tiny_dataset, tmp_path, monkeypatch, torch_one_thread,
                                                                      error, status):
    from tinygpt_cli.rundir import RunDir
    from tinygpt_cli.train import Trainer

    real_step = Trainer.train_step

    def failing_step(self):
        if self.step == 3:
            raise error
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(type(error)):
        train_new(tiny_config(tiny_dataset), tmp_path / "run")
    recorded = RunDir(tmp_path / "run").read_status()
    assert recorded["status"] == status and recorded["iteration"] == 3


# --- values at the edges: one error line, or the right result --------------------------------

@pytest.mark.parametrize("args, words", [
    (["generate", "--run", "{run}", "--seed", str(2**64)], "--seed"),
    (["train", "--nproc", str(10**30), "--device", "cpu"], "--nproc"),
    (["params", "--run", "{run}", "--n-layer", "9"], "--n-layer"),
    (["params", "--checkpoint", "{run}/best.safetensors", "--preset", "cpu"], "--preset"),
], ids=["seed-2**64", "nproc-10**30", "params-run-with-a-shape-flag", "params-checkpoint-with-a-preset"])
def test_values_out_of_reach_are_usage_errors(tiny_run, run_cli, args, words):
    proc = run_cli(*[a.format(run=tiny_run) for a in args], env=ONE_THREAD_ENV)
    assert proc.returncode == 2, proc.stderr
    assert_error_output(proc.stderr)
    assert words in proc.stderr.splitlines()[0]


def test_a_vanishing_temperature_samples_like_greedy(tiny_run, run_cli):
    def sample(temperature: str) -> subprocess.CompletedProcess:
        return run_cli("generate", "--run", tiny_run, "--max-new-tokens", "40", "--seed", "3", "--dtype", "float32",
                       "--temperature", temperature, env=ONE_THREAD_ENV)

    tiny, greedy = sample("1e-45"), sample("0")
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout


_CTRL_C_WHILE_EXITING = """
import atexit, os, signal, sys, time
atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(2)))  # runs after main's exit
sys.argv = ["tinygpt", "--version"]
from tinygpt_cli.cli.app import main
main()
"""


def test_a_ctrl_c_while_exiting_ends_the_process_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_EXITING], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert "Exception ignored" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr
    assert proc.returncode == -2  # ended by the signal itself, as a shell expects of Ctrl-C


def test_json_output_never_holds_nan(capsys):
    from tinygpt_cli.cli.console import print_json

    print_json({"loss": float("nan"), "rows": [float("inf"), 1.5]})
    assert json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON")) == \
        {"loss": None, "rows": [None, 1.5]}


def test_sampling_keeps_room_for_the_tokens_it_makes_not_a_whole_window(monkeypatch):
    import tinygpt_cli.sampling as sampling
    from tinygpt_cli.config import ModelConfig
    from tinygpt_cli.model import GPT, KVCache

    sizes = []

    class RecordingCache(KVCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sizes.append(self.k[0].size(2))

    monkeypatch.setattr(sampling, "KVCache", RecordingCache)
    model = GPT(ModelConfig(vocab_size=5, block_size=2**20, n_layer=1, n_head=1, n_embd=8, pos_embedding="rope"))
    with_cache = list(sampling.generate(model, [1, 2, 3], 6, temperature=0, seed=0))
    without = list(sampling.generate(model, [1, 2, 3], 6, temperature=0, seed=0, kv_cache=False))
    assert sizes == [3 + 6] and with_cache == without


def test_a_deeply_nested_settings_file_is_one_error_line(tmp_path, run_cli):
    deep = tmp_path / "deep.toml"
    deep.write_text("n_layer = " + "[" * 50_000 + "]" * 50_000 + "\n")
    proc = run_cli("train", "--config", deep)
    assert proc.returncode == 2
    assert_error_output(proc.stderr)
    assert "not valid TOML" in proc.stderr


def test_written_files_get_the_mode_of_any_new_file(small_text, tmp_path):
    old = os.umask(0o022)
    try:
        prepare_text(small_text, tmp_path / "d", "d", 0.1)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "d").iterdir()}
    assert all(modes[name] == 0o644 for name in ("train.bin", "val.bin", "vocab.json", "meta.json")), modes


def test_a_save_in_progress_is_a_runs_own_file_not_the_users(tmp_path):
    from tinygpt_cli.rundir import RunDir

    run = tmp_path / "run"
    run.mkdir()
    # ours (atomic_path), safetensors' own temporary beside it, and the user's
    for name in (".last.safetensors.a1b2c3.tmp", ".tmpMv8p1o", "config.json", ".tmpnotes.txt"):
        (run / name).write_text("x")
    assert RunDir(run).foreign_files() == [".tmpnotes.txt"]
    with RunDir(run).locked():  # a new holder clears the half-written files of a killed save
        pass
    assert sorted(p.name for p in run.iterdir()) == [".lock", ".tmpnotes.txt", "config.json"]
