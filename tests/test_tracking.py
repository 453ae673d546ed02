"""`--log tensorboard|wandb`: the metrics reach the tracker, and a resumed run continues the same
curves without logging a step twice. W&B runs offline (WANDB_MODE=offline), as in CI."""

from __future__ import annotations

import shutil
import sys

import pytest

from conftest import hint, tiny_config

from tinygpt_cli.errors import TinyGPTError
from tinygpt_cli.lifecycle import TrainingReporter, resume, train_new
from tinygpt_cli.rundir import RunDir
from tinygpt_cli.tracking import STEP_METRICS, open_tracker

ROLLBACK_AT = 20  # the checkpoint a resume starts from, 20 steps before the end


class KeepLastAt(TrainingReporter):
    """Copies last.safetensors aside when the evaluation of iteration `at` has saved it."""

    def __init__(self, run, at):
        self.run, self.at = RunDir(run), at

    def on_eval(self, record):
        if record["iter"] == self.at:
            shutil.copy(self.run.last_path, self.run.path.parent / "kept.safetensors")


def train_then_resume_from_earlier(run, config) -> list[dict]:
    """Train to the end, then go back to the checkpoint of ROLLBACK_AT (as after a crash that
    lost the later saves) and resume: the steps past it are trained and logged a second time.
    Returns the first training's step records."""
    train_new(config, run, KeepLastAt(run, ROLLBACK_AT))
    first = [r for r in RunDir(run).read_metrics() if "loss" in r]
    shutil.copy(run.parent / "kept.safetensors", RunDir(run).last_path)
    resume(run)
    return first


def test_tensorboard_shows_each_step_once_across_a_resume(tiny_dataset, tmp_path, torch_one_thread):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                            reason="the tensorboard extra is not installed")
    run = tmp_path / "run"
    first = train_then_resume_from_earlier(run, tiny_config(tiny_dataset, log="tensorboard", max_iters=40, eval_interval=20))
    events = event_accumulator.EventAccumulator(str(run))
    events.Reload()
    assert set(STEP_METRICS.values()) | {"eval/val_loss", "eval/val_bits_per_byte"} <= set(events.Tags()["scalars"])
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [r["iter"] for r in first]  # 10, 20, 30, 40: once each
    # A bit-exact resume logs the values the first run logged.
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in first], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 20, 40]
    assert "config" in str(events.Tags()["tensors"])


def test_wandb_offline_joins_the_same_run_and_skips_the_steps_it_has(tiny_dataset, tmp_path, monkeypatch, torch_one_thread):
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sent: list[tuple[str, int, tuple[str, ...]]] = []
    original = wandb.sdk.wandb_run.Run.log

    def spy(self, data, step=None, **kwargs):
        sent.append((self.id, step, tuple(sorted(data))))
        return original(self, data, step=step, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    run = tmp_path / "run"
    train_then_resume_from_earlier(run, tiny_config(tiny_dataset, log="wandb", max_iters=40, eval_interval=20))
    steps = [step for _, step, keys in sent if "train/loss" in keys]
    assert steps == [10, 20, 30, 40]  # the resumed run trained 21 to 40 again and sent none of them
    assert len({run_id for run_id, _, _ in sent}) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2  # both sessions, one W&B run id
    assert (run / "tracking.json").is_file()


@pytest.fixture
def tiny_config_in(tiny_dataset):
    return tiny_config(tiny_dataset)


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_a_missing_extra_is_one_error_with_the_install_command(tracker, tiny_config_in, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb" if tracker == "wandb" else "torch.utils.tensorboard", None)
    with pytest.raises(TinyGPTError) as e:
        open_tracker(tracker, RunDir(tmp_path), tiny_config_in, 0)
    assert f"--log {tracker}" in e.value.message and f"pip install 'tinygpt[{tracker}]'" in hint(e.value)


def test_overwrite_removes_the_trackers_files_with_the_run(tiny_dataset, tmp_path, torch_one_thread):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    run = tmp_path / "run"
    train_new(tiny_config(tiny_dataset, log="tensorboard", max_iters=10), run)
    (run / "notes.txt").write_text("mine")
    assert RunDir(run).foreign_files() == ["notes.txt"]  # event files belong to the run
    (run / "notes.txt").unlink()
    old = {p.name for p in run.glob("events.out.tfevents.*")}
    train_new(tiny_config(tiny_dataset, max_iters=10), run, overwrite=True)
    assert old and not list(run.glob("events.out.tfevents.*"))
