"""`train --time`: durations, the time keeper that ends a run on time, the scaling law and its
rule files, the plan that picks a shape for the time, and the command around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_MODEL, assert_error_output, tiny_cli_flags, tiny_config
from tinygpt_cli.config import describe_duration, parse_duration
from tinygpt_cli.errors import TinyGPTError, UsageError
from tinygpt_cli.runs.law import SHIPPED_RULE, Law, Point, Rule, fit_law, load_rule
from tinygpt_cli.runs.timedial import SHAPE, candidate_shapes, plan_for_time
from tinygpt_cli.timekeeper import TimeKeeper, evaluations_left


# --- durations -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           ("45", 45), (" 2 M ", 120), ("2m05s", 125)])
def test_durations_read_as_people_write_them_and_print_back_the_same(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(describe_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["10x", "m", "1h foo", "", "ten minutes", "nan", "inf", "-5", "0", "0s", "1e3"])
def test_a_non_duration_is_refused_with_the_forms_it_takes(text):
    with pytest.raises(ValueError, match="90s, 10m, 2h"):
        parse_duration(text)


# --- the time keeper -------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_on_the_clock(budget: float, max_iters: int, seconds_per_step, eval_interval: int = 10**9,
                     eval_seconds: float = 0.0) -> tuple[Clock, TimeKeeper, list]:
    """The training loop's timing on a fake clock: steps of `seconds_per_step(step)`, the keeper
    asked every 10 steps as lifecycle.py asks it, its plans taken. Returns the clock at the end
    of the loop, the keeper and the plans."""
    clock = Clock()
    keeper = TimeKeeper(budget, 0.0, tokens_per_iter=1000, eval_tokens=0, final_eval_tokens=0, clock=clock)
    plans, step = [], 0
    while step < max_iters:
        clock.now += seconds_per_step(step)
        step += 1
        if step % eval_interval == 0:
            clock.now += eval_seconds
            keeper.evaluated(eval_seconds)
        if step % 10 == 0:
            plan = keeper.after_steps(step, max_iters, eval_interval, warmup_iters=5)
            if plan is not None:
                plans.append(plan)
                max_iters = plan.max_iters
    return clock, keeper, plans


@pytest.mark.parametrize("planned", [300, 3000], ids=["a third of the steps", "three times the steps"])
def test_a_plan_that_misjudged_the_pace_is_fitted_in_its_first_half_and_ends_on_time(planned):
    clock, keeper, plans = run_on_the_clock(100.0, planned, lambda step: 0.1)
    assert plans and all(p.calibrating for p in plans)
    assert keeper.deadline - 1.0 <= clock.now <= keeper.deadline + 0.5


def test_a_machine_that_slows_down_late_shortens_the_run_a_time_or_two_and_keeps_the_time():
    clock, keeper, plans = run_on_the_clock(100.0, 1000, lambda step: 0.1 if step < 700 else 0.2)
    late = [p.max_iters for p in plans if not p.calibrating]
    assert 1 <= len(late) <= 2 and late == sorted(late, reverse=True) and late[0] < 1000
    assert clock.now <= keeper.deadline + 0.5


def test_a_machine_that_speeds_up_late_never_lengthens_the_run():
    """A longer run would raise the learning rate again, late in its decay: it ends early instead."""
    clock, keeper, plans = run_on_the_clock(100.0, 1000, lambda step: 0.1 if step < 700 else 0.05)
    assert not [p for p in plans if not p.calibrating]
    assert clock.now < keeper.deadline - 10


def test_a_resumed_run_is_only_ever_shortened():
    clock = Clock()
    keeper = TimeKeeper(100.0, 60.0, tokens_per_iter=1000, eval_tokens=0, final_eval_tokens=0, calibrate=False, clock=clock)
    replans = []
    for step in range(10, 200, 10):
        clock.now += 1.0  # 0.1 s a step: 1,000 steps would fit the 40 s left, and the plan has 200
        replans.append(keeper.after_steps(step, 200, 10**9, warmup_iters=5))
    assert replans == [None] * len(replans)


def test_evaluations_count_against_the_time_but_not_in_the_pace():
    clock, keeper, _ = run_on_the_clock(100.0, 1000, lambda step: 0.05, eval_interval=100, eval_seconds=2.0)
    assert keeper.pace() == pytest.approx(0.05)
    assert keeper.deadline - 2.5 <= clock.now <= keeper.deadline + 0.5


@pytest.mark.parametrize("step, max_iters, interval, left", [(0, 100, 10, 10), (5, 100, 10, 10), (10, 100, 10, 9),
                                                             (0, 95, 10, 10), (95, 95, 10, 0), (90, 95, 10, 1)])
def test_evaluations_left_count_the_periodic_ones_and_the_last_step(step, max_iters, interval, left):
    assert evaluations_left(step, max_iters, interval) == left


# --- the scaling law ---------------------------------------------------------------------------

KNOWN = Law(E=1.3, A=40.0, alpha=0.45, B=900.0, beta=0.6)


def law_points(law: Law) -> list[Point]:
    return [Point(f"{n}", n, d, law.loss(n, d)) for n in (1e5, 3e5, 1e6, 3e6) for d in (3e5, 1e6, 3e6, 1e7)]


def test_the_fit_recovers_a_law_from_points_on_it():
    points = law_points(KNOWN)
    law, spread = fit_law(points, bootstrap=4)
    assert max(abs(law.loss(p.params, p.tokens) - p.val_loss) for p in points) < 2e-3
    assert law.alpha == pytest.approx(KNOWN.alpha, abs=0.05) and law.beta == pytest.approx(KNOWN.beta, abs=0.05)
    assert set(spread) == {"E", "A", "alpha", "B", "beta"}


def test_the_fit_refuses_too_few_runs():
    with pytest.raises(TinyGPTError, match="at least 6 runs"):
        fit_law(law_points(KNOWN)[:4])


def test_a_rule_file_round_trips_and_says_what_it_was_fitted_on(tmp_path):
    rule = Rule(KNOWN, law_points(KNOWN), {"corpus": "a text", "tokenizer": "char", "vocab_size": 65, "train_tokens": 10**6})
    rule.save(tmp_path / "rule.json")
    again = load_rule(tmp_path / "rule.json")
    assert again.law == KNOWN and again.points == rule.points
    assert again.ranges()["epochs"] == (0.3, 10.0)
    assert "16 runs of a text (char tokens)" in again.summary()


@pytest.mark.parametrize("content, message", [("{", "cannot read"), ('{"format": "other"}', "not a scaling rule"),
                                               ('{"format": "tinygpt-scaling-rule-1", "law": {"E": 1}}', "not a scaling rule"),
                                               ('[1, 2]', "not a scaling rule")])
def test_a_file_that_is_not_a_rule_is_one_line(tmp_path, content, message):
    (tmp_path / "rule.json").write_text(content)
    with pytest.raises(TinyGPTError, match=message):
        load_rule(tmp_path / "rule.json")


def test_the_shipped_rule_is_fitted_on_tiny_shakespeare_runs_and_predicts_them():
    rule = load_rule(SHIPPED_RULE)
    assert rule.fitted_on["corpus"] == "tiny Shakespeare" and len(rule.points) >= 12
    worst = max(abs(rule.law.loss(p.params, p.tokens) - p.val_loss) for p in rule.points)
    assert worst < 0.05
    # More tokens never hurt, and at a fixed compute (6ND) neither the smallest nor the largest model wins.
    assert rule.law.loss(1e6, 1e7) < rule.law.loss(1e6, 1e6)
    compute = 6 * 1e6 * 5e6
    losses = [rule.law.loss(n, compute / 6 / n) for n in (1e4, 1e5, 1e6, 1e7, 1e8)]
    assert min(losses) < min(losses[0], losses[-1])


# --- the plan ----------------------------------------------------------------------------------

def flop_timer(ms_per_gflop: float):
    """A stand-in for timing steps: milliseconds in proportion to a step's FLOPs."""
    from tinygpt_cli.params import param_report

    calls = []

    def timer(config, estimate_ms):
        calls.append(tuple(getattr(config.model, k) for k in SHAPE))
        t = config.train
        return param_report(config.model).flops_per_token() * t.batch_size * config.model.block_size / 1e9 * ms_per_gflop

    timer.calls = calls
    return timer


def test_the_plan_picks_the_lowest_predicted_loss_for_the_time_and_fills_it(tiny_dataset):
    rule = load_rule(SHIPPED_RULE)
    timer = flop_timer(10.0)
    plan = plan_for_time(tiny_config(tiny_dataset, block_size=64, n_layer=4), 600, set(), rule, timer=timer)
    timed = [c for c in plan.candidates if c.timed]
    assert plan.chosen == min(timed, key=lambda c: c.predicted_loss) == plan.candidates[0]
    assert len(timer.calls) == len(set(timer.calls)) <= 7  # each shape timed once, a handful in all
    train = plan.config.train
    assert train.time == 600 and train.max_iters == plan.chosen.iters and train.warmup_iters < train.max_iters
    assert (plan.config.model.n_layer, plan.config.model.n_embd) == (plan.chosen.n_layer, plan.chosen.n_embd)
    # The steps leave time for the evaluations and the start: most of the 600 s, not all.
    steps_s = plan.chosen.iters * plan.chosen.ms_per_iter / 1000
    assert 0.5 * 600 < steps_s < 600


def test_a_faster_machine_gets_a_bigger_model(tiny_dataset):
    rule = load_rule(SHIPPED_RULE)
    config = tiny_config(tiny_dataset, block_size=64)
    slow, fast = (plan_for_time(config, 600, set(), rule, timer=flop_timer(ms)).chosen for ms in (20.0, 0.2))
    assert fast.params > slow.params and fast.tokens > slow.tokens


def test_shape_settings_the_user_gives_are_kept(tiny_dataset):
    plan = plan_for_time(tiny_config(tiny_dataset, block_size=64, n_layer=3), 300, {"n_layer"}, load_rule(SHIPPED_RULE),
                         timer=flop_timer(10.0))
    assert {c.n_layer for c in plan.candidates} == {3} and plan.config.model.n_layer == 3
    assert any("kept your --n-layer" in note for note in plan.notes)


def test_a_head_count_that_divides_no_width_is_a_usage_error(tiny_dataset):
    with pytest.raises(UsageError, match="--n-head 7"):
        candidate_shapes(tiny_config(tiny_dataset, n_head=7, n_embd=70), {"n_head"})


def test_time_and_max_iters_together_are_refused(tiny_dataset):
    with pytest.raises(UsageError, match="--time or --max-iters"):
        plan_for_time(tiny_config(tiny_dataset), 60, {"max_iters"}, load_rule(SHIPPED_RULE), timer=flop_timer(10.0))


def test_too_little_time_for_any_training_says_so(tiny_dataset):
    with pytest.raises(TinyGPTError, match="too few to train"):
        plan_for_time(tiny_config(tiny_dataset, block_size=64), 30, set(), load_rule(SHIPPED_RULE), timer=flop_timer(1000.0))


def test_a_dataset_unlike_the_rules_is_said_to_be_extrapolated(tiny_dataset):
    plan = plan_for_time(tiny_config(tiny_dataset, block_size=64), 300, set(), load_rule(SHIPPED_RULE), timer=flop_timer(10.0))
    said = " ".join(plan.notes)
    assert "this dataset has" in said  # another vocabulary than tiny Shakespeare's 65 characters
    assert "times" in said  # its 18,000 training tokens are seen far more often than tiny Shakespeare's were


# --- the command -------------------------------------------------------------------------------

def test_train_time_trains_to_its_plan_and_keeps_it_in_the_run(tiny_dataset, tmp_path, run_cli):
    run = tmp_path / "run"
    flags = tiny_cli_flags(tiny_dataset, max_iters=None, eval_interval=None)
    r = run_cli("train", *flags, "--time", "8s", "--out", run, "--json", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "time dial: 8s on this machine: 2 layers x 32 wide" in r.stderr
    assert "kept your --n-layer, --n-embd, --n-head" in r.stderr
    summary = json.loads(r.stdout)
    saved = json.loads((run / "config.json").read_text())
    status = json.loads((run / "run.json").read_text())
    assert saved["train"]["time"] == 8.0 and status["status"] == "finished"
    # Every change of plan was written down: the saved plan is the one the run finished.
    assert saved["train"]["max_iters"] == status["iteration"] == summary["iterations"]
    assert summary["time_plan"]["chosen"]["n_layer"] == TINY_MODEL["n_layer"]


def test_a_resume_given_max_iters_runs_them_without_the_time(tiny_dataset, tmp_path):
    from tinygpt_cli.lifecycle import resume, train_new

    run = tmp_path / "run"
    first = train_new(tiny_config(tiny_dataset, time=2.0), run)
    result = resume(run, {"max_iters": first.iteration + 20})
    assert result.iteration == first.iteration + 20
    assert json.loads((run / "config.json").read_text())["train"]["time"] is None


@pytest.mark.parametrize("args, code, message", [
    (["--time", "10m", "--max-iters", "100"], 2, "give --time or --max-iters"),
    (["--rule", "rule.json"], 2, "--rule is the rule --time plans with"),
    (["--time", "10m", "--rule", "missing.json", "--dry-run"], 1, "no scaling rule at missing.json"),
    (["--time", "ten"], 2, "is not a duration"),
])
def test_time_dial_mistakes_are_one_line(tiny_dataset, run_cli, args, code, message):
    r = run_cli("train", "--data-dir", tiny_dataset, *args)
    assert r.returncode == code, r.stderr
    assert_error_output(r.stderr, message)


def test_dry_run_shows_the_plan_and_trains_nothing(tiny_dataset, tmp_path, run_cli):
    r = run_cli("train", "--data-dir", tiny_dataset, "--time", "90s", "--n-layer", "4", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["time_plan"]
    assert plan["time_s"] == 90 and plan["chosen"]["n_layer"] == 4 and plan["chosen"]["timed"]
    losses = [c["predicted_loss"] for c in plan["candidates"]]
    finite = [x for x in losses if x is not None]  # JSON has no inf: a shape too slow for the time has none
    assert finite and finite == sorted(finite) == losses[:len(finite)]
    assert not (tmp_path / "runs").exists()


# --- tinygpt scaling -------------------------------------------------------------------------

def test_shapes_are_layers_by_width_with_heads_32_wide():
    from tinygpt_cli.runs.scaling import parse_shapes

    assert parse_shapes("4x128, 2X16") == [(4, 128, 4), (2, 16, 1)]
    for bad, message in (("4x", "not LAYERSxWIDTH"), ("0x64,4x64", "at least one layer"), ("4x64", "at least two sizes")):
        with pytest.raises(UsageError, match=message):
            parse_shapes(bad)


def test_the_grid_gives_each_size_t_2t_and_4t_adding_up_to_the_time(tmp_path, tiny_dataset):
    from tinygpt_cli.runs.scaling import parse_shapes, plan_scaling

    plan = plan_scaling(tiny_config(tiny_dataset), 1400, parse_shapes("1x16,1x32"), tmp_path)
    assert [c.name for c in plan.cells] == ["1x16-1m40s", "1x16-3m20s", "1x16-6m40s", "1x32-1m40s", "1x32-3m20s", "1x32-6m40s"]
    assert sum(c.budget_s for c in plan.cells) == pytest.approx(1400)
    with pytest.raises(UsageError, match="too short to learn anything"):
        plan_scaling(tiny_config(tiny_dataset), 60, parse_shapes("1x16,1x32"), tmp_path)


def test_scaling_trains_what_is_left_of_its_grid_and_fits_a_rule_that_train_plans_with(tiny_dataset, tmp_path, monkeypatch, tinygpt):
    """Five cells finished before (tiny runs of their shape), one left to train for its time: the
    command trains that one alone, then fits the six, writes rule.json and scaling.png, and
    train --time --rule plans with the rule."""
    from tinygpt_cli.lifecycle import train_new
    from tinygpt_cli.runs import scaling
    from tinygpt_cli.runs.scaling import parse_shapes, plan_scaling

    monkeypatch.setattr(scaling, "MIN_CELL_S", 1.0)
    plan = plan_scaling(tiny_config(tiny_dataset), 14, parse_shapes("1x16,2x32"), tmp_path / "grid")
    for cell, iters in zip(plan.cells[:-1], (20, 40, 80, 20, 40)):
        n_layer, n_embd, n_head = cell.shape
        train_new(tiny_config(tiny_dataset, n_layer=n_layer, n_embd=n_embd, n_head=n_head, max_iters=iters), cell.path)
    left = plan.cells[-1]
    flags = ["--shapes", "1x16,2x32", "--data-dir", tiny_dataset, "--out", tmp_path / "grid", "--json"]
    monkeypatch.setattr("tinygpt_cli.runs.timedial.START_S", 0.0)
    code, stdout, stderr = tinygpt("scaling", "--time", "14s", *flags)
    assert code == 0, stderr
    assert stderr.count("finished before") == 5 and f"{left.name}: training" in stderr
    result = json.loads(stdout)
    assert len(result["points"]) == 6 and (tmp_path / "grid" / "rule.json").exists()
    assert Path(result["plot"]).read_bytes().startswith(b"\x89PNG")
    rule = load_rule(tmp_path / "grid" / "rule.json")
    assert rule.fitted_on["corpus"] == "tiny" and rule.fitted_on["train_tokens"] > 0
    code, stdout, stderr = tinygpt("train", "--data-dir", tiny_dataset, "--time", "2m", "--rule", tmp_path / "grid" / "rule.json",
                                   "--n-layer", "1", "--n-embd", "16", "--n-head", "1", "--block-size", "16", "--dry-run", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["time_plan"]["rule"] == str(tmp_path / "grid" / "rule.json")


def test_a_sweep_of_times_reruns_into_its_folder_without_retraining(tiny_dataset, tmp_path, run_cli):
    """Its runs fitted their own iterations to their time: a rerun finds them finished, not changed."""
    flags = [*tiny_cli_flags(tiny_dataset, max_iters=None, eval_interval=None), "--time", "3s,4s", "--out", tmp_path / "sweep"]
    first = run_cli("sweep", *flags, env={"OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stderr
    again = run_cli("sweep", *flags, env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (finished)") == 2
