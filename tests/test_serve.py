"""`tinygpt serve`: the OpenAI API through the official `openai` client against a live server on
127.0.0.1, bad input and hang-ups, many clients at once, the engine's batches and reloads, and
the playground page in headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ONE_THREAD_ENV, REPO, assert_one_error, cli_env, tiny_cli_flags, wait_for

openai = pytest.importorskip("openai", reason="the test extra installs openai")
pytest.importorskip("fastapi", reason="the serve extra (in the test extra) installs fastapi")
httpx = pytest.importorskip("httpx")

KEY = "test-key"
PROMPT = "the king and the queen "  # words of the tiny run's text: every character is in its vocabulary
GREETING = "My name is Mira."


@contextmanager
def serving(cwd: Path, *args: str) -> Iterator[str]:
    """A `tinygpt serve --port 0 ARGS` process; yields its URL; stops it (Ctrl-C) at the end."""
    log = cwd / "serve.log"
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tinygpt_cli", "serve", "--port", "0", *args], cwd=cwd,
                                env=cli_env(ONE_THREAD_ENV), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: "(Ctrl-C stops the server)" in log.read_text(encoding="utf-8"), proc, log, timeout=60)
        yield re.search(r"playground  (http://\S+)/\n", log.read_text(encoding="utf-8")).group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory, tiny_run, chat_run) -> Path:
    """A runs folder holding a copy of the tiny text run ("text") and of the chat run ("chat")."""
    root = tmp_path_factory.mktemp("served") / "runs"
    shutil.copytree(tiny_run, root / "text")
    shutil.copytree(chat_run, root / "chat")
    return root


@pytest.fixture(scope="module")
def api(runs_dir) -> Iterator[str]:
    """A server of both runs that wants a key: its URL."""
    with serving(runs_dir.parent, "--run", "text", "--run", "chat", "--runs-dir", str(runs_dir), "--api-key", KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=f"{api}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def cli_json(tinygpt, monkeypatch):
    """A command's --json output, run in this process on one thread, as the server runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def run(*args) -> dict:
        code, out, err = tinygpt(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    return run


def complete(client, prompt: str = PROMPT, stream: bool = False, **fields) -> tuple[str, str | None]:
    """A completion's text and finish reason, whole or from its stream."""
    fields = {"model": "text", "max_tokens": 40, "temperature": 0.9, **fields}
    if not stream:
        choice = client.completions.create(prompt=prompt, **fields).choices[0]
        return choice.text, choice.finish_reason
    chunks = list(client.completions.create(prompt=prompt, stream=True, **fields))
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason


def chat(client, content: str = GREETING, stream: bool = False, **fields) -> tuple[str, str | None]:
    fields = {"model": "chat", "messages": [{"role": "user", "content": content}], "temperature": 0, **fields}
    if not stream:
        choice = client.chat.completions.create(**fields).choices[0]
        return choice.message.content, choice.finish_reason
    chunks = list(client.chat.completions.create(stream=True, **fields))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].choices[0].finish_reason


# --- the API, through the official client -------------------------------------------------------

def test_models_lists_the_served_runs(client):
    assert sorted(m.id for m in client.models.list().data) == ["chat", "text"]


def test_a_seeded_completion_is_generates_text_whole_or_streamed_and_repeats_itself(client, runs_dir, cli_json):
    whole = complete(client, seed=7)
    assert whole == complete(client, seed=7, stream=True) == complete(client, seed=7)
    assert whole[1] == "length"
    assert complete(client, seed=8)[0] != whole[0]
    expected = cli_json("generate", "--run", runs_dir / "text", "--prompt", PROMPT, "--max-new-tokens", "40",
                        "--temperature", "0.9", "--seed", "7")
    assert expected["samples"] == [whole[0]]


def test_usage_counts_the_prompt_and_every_answers_tokens(client):
    reply = client.completions.create(model="text", prompt=PROMPT, max_tokens=12, n=3, seed=1)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.prompt_tokens == len(PROMPT) and reply.usage.completion_tokens == 36
    assert reply.choices[1].text == complete(client, max_tokens=12, seed=2, temperature=1.0)[0]  # choice i: seed + i


def test_logprobs_are_the_model_probabilities_that_predict_prints(client, runs_dir, cli_json):
    choice = client.completions.create(model="text", prompt=PROMPT, max_tokens=1, logprobs=5, temperature=0).choices[0]
    shown = cli_json("predict", "--run", runs_dir / "text", "--prompt", PROMPT, "--show", "5")["candidates"]
    served = sorted(choice.logprobs.top_logprobs[0].values(), reverse=True)
    assert [math.exp(lp) for lp in served] == pytest.approx([c["model_probability"] for c in shown], rel=1e-5)
    assert choice.logprobs.token_logprobs[0] == pytest.approx(served[0])  # greedy: the top one
    five = client.completions.create(model="text", prompt=PROMPT, max_tokens=5, logprobs=0, seed=1).choices[0].logprobs
    assert five.text_offset == [0, 1, 2, 3, 4] and five.top_logprobs == [{}] * 5  # one character per token here


def test_a_stop_string_cuts_the_text_before_it(client):
    text, _ = complete(client, seed=3, max_tokens=60)
    stop = text[10:12]
    cut, reason = complete(client, seed=3, max_tokens=60, stop=[stop, "qqqq"])
    assert (cut, reason) == (text[: text.index(stop)], "stop")
    assert complete(client, seed=3, max_tokens=60, stop=stop, stream=True) == (cut, reason)


def test_a_completion_longer_than_the_context_slides_its_window_as_generate_does(client, runs_dir, cli_json):
    text, reason = complete(client, seed=5, max_tokens=50)  # the tiny run's context is 16 tokens
    assert reason == "length" and len(text) == 50
    expected = cli_json("generate", "--run", runs_dir / "text", "--prompt", PROMPT, "--max-new-tokens", "50",
                        "--temperature", "0.9", "--seed", "5")
    assert expected["samples"] == [text]


def test_chat_answers_a_chat_run_whole_and_streamed_ending_its_turn(client, runs_dir):
    reply = chat(client)
    assert reply == chat(client, stream=True)
    assert reply[1] == "stop" and reply[0]
    done = subprocess.run([sys.executable, "-m", "tinygpt_cli", "chat", "--run", "runs/chat", "--temperature", "0", "--json"],
                          cwd=runs_dir.parent, env=cli_env(ONE_THREAD_ENV), input=GREETING + "\n", capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["messages"][-1]["content"] == reply[0]


def test_chat_logprobs_give_each_tokens_bytes_and_alternatives(client):
    choice = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": GREETING}], temperature=0,
                                            logprobs=True, top_logprobs=3).choices[0]
    content = choice.logprobs.content
    assert "".join(bytes(t.bytes).decode() for t in content) == choice.message.content
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)


def test_chat_on_a_run_not_trained_on_conversations_is_a_400_naming_why(client):
    with pytest.raises(openai.BadRequestError, match="not trained on conversations"):
        chat(client, model="text")


def test_thirty_two_clients_at_once_each_get_their_serial_answer(client):
    """Streamed and whole, prompts of two lengths (two batches), n = 2: each answer is the one it
    gets alone."""
    asks = [dict(prompt=PROMPT[: 10 + (i % 2) * 5], seed=i, stream=i % 3 == 0, max_tokens=30 + i) for i in range(32)]
    serial = [complete(client, **ask) for ask in asks]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda ask: complete(client, **ask), asks))
        two = pool.submit(client.completions.create, model="text", prompt=PROMPT, max_tokens=20, n=2, seed=40, temperature=0.9)
    assert together == serial
    assert [c.text for c in two.result().choices] == [complete(client, max_tokens=20, seed=s)[0] for s in (40, 41)]


# --- bad input: each its status and OpenAI's error JSON, and the server goes on --------------------

def raw(api: str, body: bytes | dict, path: str = "/v1/completions", key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {key}"} if key else {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(api + path, content=content, headers=headers, timeout=60, **kw)


GOOD = {"model": "text", "prompt": PROMPT, "max_tokens": 5}
BAD = {
    "malformed JSON": (b'{"model": "text", "prompt": ', KEY, 400, "not valid JSON"),
    "a body over the limit": (b"{" + b" " * (4 * 2**20) + b"}", KEY, 413, "over the"),
    "a negative max_tokens": (GOOD | {"max_tokens": -3}, KEY, 422, "max_tokens"),
    "a huge max_tokens": (GOOD | {"max_tokens": 10**9}, KEY, 422, "max_tokens"),
    "an unknown field": (GOOD | {"echo": True}, KEY, 422, "echo"),
    "a temperature of NaN": (b'{"model": "text", "prompt": "a", "temperature": NaN}', KEY, 422, "finite number"),
    "an unknown model": (GOOD | {"model": "nope"}, KEY, 404, "'nope' does not exist"),
    "a character the vocabulary lacks": (GOOD | {"prompt": "東京"}, KEY, 400, "character"),
    "a token id past the vocabulary": (GOOD | {"prompt": [10**6]}, KEY, 400, "past the model's vocabulary"),
    "a wrong key": (GOOD, "nope", 401, "API key"),
    "no key": (GOOD, None, 401, "API key"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_gets_its_status_and_an_openai_error_and_the_next_request_works(api, client, case):
    body, key, status, message = BAD[case]
    answer = raw(api, body, key=key)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert complete(client, max_tokens=3)[1] == "length"


def test_a_chunked_body_over_the_limit_is_a_413_too(api):
    chunks = (b" " * 2**20 for _ in range(5))  # no length said: counted as it comes
    answer = httpx.post(f"{api}/v1/completions", content=chunks, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "body_too_large"


def test_null_fields_are_their_defaults_as_in_openais_api(api):
    answer = raw(api, GOOD | {"temperature": None, "n": None, "stream": None, "top_p": None, "seed": 3})
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 1


def test_a_request_addressed_to_another_host_name_is_refused(api):
    """DNS rebinding: a page whose domain name now points at 127.0.0.1 cannot use the server."""
    answer = httpx.get(f"{api}/v1/models", headers={"host": "evil.example", "authorization": f"Bearer {KEY}"}, timeout=60)
    assert answer.status_code == 400


def test_a_client_that_hangs_up_mid_stream_stops_cleanly_and_the_others_go_on(api, client):
    with httpx.stream("POST", f"{api}/v1/completions", json=GOOD | {"max_tokens": 4000, "stream": True},
                      headers={"authorization": f"Bearer {KEY}"}, timeout=60) as answer:
        lines = answer.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    assert complete(client, seed=7) == complete(client, seed=7, stream=True)


def test_a_full_queue_is_a_503(tiny_run):
    """The engine's queue, behind the app, in process (a live server's queue empties too fast to
    fill on purpose)."""
    from fastapi.testclient import TestClient

    from tinygpt_cli.server.app import create_app
    from tinygpt_cli.server.state import ServerState
    from tinygpt_cli.serving import ModelStore, Scheduler

    runs = lambda: {"text": tiny_run}  # noqa: E731
    scheduler = Scheduler(max_waiting=2).start()
    try:
        app = create_app(ServerState(runs, ModelStore(runs, "cpu", "float32"), scheduler), loopback=False)
        answer = TestClient(app).post("/v1/completions", json=GOOD | {"n": 3})
        assert answer.status_code == 503 and "busy" in answer.json()["error"]["message"]
    finally:
        scheduler.close()


def test_the_start_line_gives_the_url_and_a_client_snippet_that_runs(api, runs_dir):
    log = (runs_dir.parent / "serve.log").read_text(encoding="utf-8")
    snippet = log[log.index("from openai import OpenAI"):log.index("(Ctrl-C")]
    assert f'base_url="{api}/v1"' in snippet
    assert KEY not in log  # the key is the user's to paste, never printed (logs keep what a server prints)
    done = subprocess.run([sys.executable, "-c", snippet.replace('api_key="YOUR-API-KEY"', f'api_key="{KEY}"')], env=cli_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


def test_listening_beyond_this_machine_needs_a_key(run_cli, tiny_run):
    done = run_cli("serve", "--run", str(tiny_run), "--host", "0.0.0.0")
    assert_one_error(done.returncode, done.stderr, 2, "opens the server to the network", hint="--api-key KEY")


# --- the engine ------------------------------------------------------------------------------------

def engine_choice(served, seed: int, max_tokens: int, sink: list):
    from tinygpt_cli.serving import Choice, Settings

    return Choice(served, served.ckpt.tokenizer.encode(PROMPT), Settings(max_tokens, 1.0, seed=seed), sink.append)


def test_an_answer_whose_client_went_away_is_dropped_at_the_next_step(tiny_run):
    with engine(tiny_run) as (served, scheduler):
        gone, after = engine_choice(served, 1, 4000, []), engine_choice(served, 2, 200, [])
        gone_deltas = []
        gone.send = lambda d: (gone_deltas.append(d), len(gone_deltas) == 3 and gone.cancelled.set())
        scheduler.submit([gone])
        done = finished(after)
        scheduler.submit([after])
        assert done.wait(60)
    assert len(gone.tokens) < 10 and not any(d.finish_reason for d in gone_deltas)


@contextmanager
def engine(run: Path, **limits):
    from tinygpt_cli.serving import ModelStore, Scheduler

    scheduler = Scheduler(**limits).start()
    try:
        yield ModelStore(lambda: {"text": run}, "cpu", "float32").get("text"), scheduler
    finally:
        scheduler.close()


def finished(choice) -> threading.Event:
    """Set once `choice` sends its last delta; the deltas collect in `choice.deltas`."""
    done, choice.deltas = threading.Event(), []
    choice.send = lambda d: (choice.deltas.append(d), d.finish_reason and done.set())
    return done


def test_a_row_whose_scores_are_not_finite_ends_its_own_answer_only(tiny_run, monkeypatch):
    from tinygpt_cli.sampling import Decoder

    with engine(tiny_run) as (served, scheduler):
        alone = engine_choice(served, 2, 30, [])
        done = finished(alone)
        scheduler.submit([alone])
        assert done.wait(60)
        original, calls = Decoder.unchecked_scores, []

        def broken_first_row(decoder):
            scores = original(decoder)
            calls.append(1)
            if len(calls) == 5 and scores.size(0) == 2:
                scores[0, 3] = float("nan")
            return scores

        monkeypatch.setattr(Decoder, "unchecked_scores", broken_first_row)
        bad, good = engine_choice(served, 1, 30, []), engine_choice(served, 2, 30, [])
        waits = [finished(bad), finished(good)]
        scheduler.submit([bad, good])  # one request: one batch of two rows
        assert all(w.wait(60) for w in waits)
    assert bad.deltas[-1].finish_reason == "error" and "not finite" in bad.deltas[-1].error.message
    assert good.tokens == alone.tokens and good.deltas[-1].finish_reason == "length"


def test_answers_past_the_active_limit_wait_and_past_the_queue_are_refused(tiny_run):
    from tinygpt_cli.serving import QueueFull

    with engine(tiny_run, max_waiting=2, max_active=1) as (served, scheduler):
        long = engine_choice(served, 1, 4000, [])
        started = threading.Event()
        long.send = lambda d: started.set()
        scheduler.submit([long])
        assert started.wait(60)  # writing: the one answer in progress
        waiting = [engine_choice(served, s, 5, []) for s in (2, 3)]
        waits = [finished(c) for c in waiting]
        scheduler.submit(waiting)
        with pytest.raises(QueueFull):
            scheduler.submit([engine_choice(served, 4, 5, [])])
        assert not any(w.is_set() for w in waits)
        long.cancelled.set()
        assert all(w.wait(60) for w in waits)


def test_stopping_the_server_ends_every_unfinished_answer_with_an_error(tiny_run):
    with engine(tiny_run) as (served, scheduler):
        long = engine_choice(served, 1, 4000, [])
        done = finished(long)
        scheduler.submit([long])
    assert done.wait(10) and long.deltas[-1].error.message == "the server is stopping"


def test_a_delta_reaches_the_event_loop_without_waiting_for_the_next(tiny_run):
    """The handover is bunched (at most every HANDOFF_S), never held for a delta that may not come."""
    import asyncio

    from tinygpt_cli.server.state import Outbox
    from tinygpt_cli.serving import Delta

    async def two_deltas_then_silence() -> list:
        outbox = Outbox(asyncio.get_running_loop())
        send = outbox.sender(0)
        threading.Thread(target=lambda: (send(Delta("a", [])), send(Delta("b", [])))).start()
        return [await asyncio.wait_for(outbox.queue.get(), 10) for _ in range(2)]

    assert [d.text for _, d in asyncio.run(two_deltas_then_silence())] == ["a", "b"]


def test_a_changed_checkpoint_is_loaded_for_the_next_request_and_the_running_one_keeps_its_model(tiny_run, tmp_path):
    import torch

    from tinygpt_cli.serving import ModelStore

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    store = ModelStore(lambda: {"run": run}, "cpu", "float32")
    before = store.get("run")
    weights = before.model.tok_emb.weight.clone()
    assert store.get("run") is before  # unchanged: not loaded again
    os.replace(run / "last.safetensors", run / "best.safetensors")  # a training saved a new best
    after = store.get("run")
    assert after is not before and after.path == before.path
    assert torch.equal(before.model.tok_emb.weight, weights)  # the old model is untouched
    assert [s["iteration"] for s in store.samples("run")] == [before.ckpt.iteration, after.ckpt.iteration]


# --- the playground, in a real browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
browser_test = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (Debian's chromium package; .ci/run installs it)")
SCREENSHOTS = REPO / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def playground(runs_dir) -> Iterator[str]:
    """A server of every run under the runs folder (found again as new ones start), no key."""
    with serving(runs_dir.parent, "--runs-dir", str(runs_dir)) as url:
        yield url


@pytest.fixture
def page(browser, playground):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(playground + "/")
    page.wait_for_selector("#model option", state="attached")
    yield page
    page.close()
    assert errors == []


def screenshot(page, name: str) -> None:
    """Into docs/screenshots when TINYGPT_SCREENSHOTS=1 (the README shows them)."""
    shot = page.screenshot(full_page=True)
    if os.environ.get("TINYGPT_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(shot)


@browser_test
def test_the_page_writes_generates_text_and_shows_why_a_token_came(page, runs_dir, cli_json):
    page.select_option("#model", "text")
    page.fill("#prompt", PROMPT)
    for field, value in (("#temperature", "0.9"), ("#seed", "7"), ("#max-tokens", "40")):
        page.fill(field, value)
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .tok.gen').length === 40")
    tokens = page.locator("#output .tok.gen")
    expected = cli_json("generate", "--run", runs_dir / "text", "--prompt", PROMPT, "--max-new-tokens", "40",
                        "--temperature", "0.9", "--seed", "7")["samples"][0]
    assert [json.loads(t) for t in tokens.evaluate_all("els => els.map(e => JSON.stringify(e.dataset.id))")] == \
        [str(i) for i in _char_ids(runs_dir, expected)]
    tokens.nth(12).focus()
    page.keyboard.press("Enter")  # the keyboard opens it as a click does
    page.wait_for_selector("#candidates .cand")
    context = PROMPT + expected[:12]
    shown = cli_json("predict", "--run", runs_dir / "text", "--prompt", context, "--temperature", "0.9", "--show", "10")
    rows = page.locator("#candidates .cand")
    assert rows.count() == 10
    assert [rows.nth(i).locator(".cand-model").inner_text() for i in range(10)] == \
        [f"{100 * c['model_probability']:.1f}%" for c in shown["candidates"]]
    assert [rows.nth(i).locator(".cand-prob").inner_text() for i in range(10)] == \
        [f"{100 * c['probability']:.1f}%" for c in shown["candidates"]]
    weights = cli_json("attention", "--run", runs_dir / "text", "--prompt", context)["weights"]
    for layer, head in ((1, 0), (0, 1)):
        page.select_option("#layer", str(layer))
        page.select_option("#head", str(head))
        strip = page.locator("#attention .att").evaluate_all("els => els.map(e => Number(e.dataset.weight))")
        assert strip == pytest.approx(weights[layer][head][-1], abs=1e-6)
    screenshot(page, "why-this-token")


def _char_ids(runs_dir: Path, text: str) -> list[int]:
    from tinygpt_cli.checkpoint import load_checkpoint

    return load_checkpoint(runs_dir / "text" / "best.safetensors").tokenizer.encode(text)


@browser_test
def test_the_sliders_reshape_the_distribution_the_token_was_drawn_from(page):
    page.select_option("#model", "text")
    page.fill("#prompt", PROMPT)
    page.fill("#max-tokens", "5")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .tok.gen').length === 5")
    page.locator("#output .tok.gen").nth(2).click()
    page.wait_for_selector("#candidates .cand")
    page.fill("#why-temperature", "0")
    page.dispatch_event("#why-temperature", "input")
    page.wait_for_function("document.querySelector('#candidates .cand .cand-prob').textContent === '100.0%'")


@browser_test
def test_surprise_colours_each_token_by_its_loss(page, runs_dir, cli_json):
    page.select_option("#model", "text")
    page.click("#tab-surprise")
    page.fill("#surprise-text", PROMPT)
    page.click("#surprise-go")
    page.wait_for_selector("#surprise-out .sur[data-loss]")
    losses = page.locator("#surprise-out .sur[data-loss]").evaluate_all("els => els.map(e => Number(e.dataset.loss))")
    expected = cli_json("surprise", "--run", runs_dir / "text", PROMPT)
    assert losses == pytest.approx(expected["losses"][1:], abs=1e-6)
    assert f"{expected['bits_per_byte']:.3f}" in page.inner_text("#surprise-summary")


@browser_test
def test_the_runs_tab_shows_a_live_run_grow_while_it_trains(page, runs_dir, tiny_dataset):
    log = runs_dir.parent / "live.log"
    flags = tiny_cli_flags(tiny_dataset, max_iters=100_000, eval_interval=10)
    with log.open("w", encoding="utf-8") as out:
        training = subprocess.Popen([sys.executable, "-m", "tinygpt_cli", "train", *flags, "--out", str(runs_dir / "live")],
                                    env=cli_env(ONE_THREAD_ENV), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (runs_dir / "live" / "best.safetensors").exists(), training, log)
        page.click("#tab-runs")
        page.locator("#runs-table tr[data-run='live']").click()
        page.wait_for_selector("#curve polyline.val")
        first = int(page.get_attribute("#curve polyline.val", "data-points"))
        page.wait_for_function(f"Number(document.querySelector('#curve polyline.val').dataset.points) >= {first + 3}", timeout=60_000)
        assert "running" in page.inner_text("#runs-table tr[data-run='live']")
        page.wait_for_function("!document.querySelector(\"#runs-table tr[data-run='live'] td:nth-child(3)\").textContent.startsWith('0 ')")
        page.wait_for_selector("#samples :text('iteration')", timeout=30_000)
        screenshot(page, "live-training")
    finally:
        training.send_signal(signal.SIGINT)
        training.wait(timeout=60)


@browser_test
def test_the_chat_tab_talks_with_a_chat_run(page, client):
    page.select_option("#model", "chat")
    page.click("#tab-chat")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-input", GREETING)
    page.focus("#chat-input")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#chat-log .msg.assistant').length === 1 && !document.querySelector('#chat-send').disabled")
    assert page.inner_text("#chat-log .msg.assistant").strip().endswith(chat(client)[0].strip())


@browser_test
def test_the_model_tab_shows_the_parameters_and_the_embedding_map(page, runs_dir, cli_json):
    page.select_option("#model", "text")
    page.click("#tab-model")
    page.wait_for_selector("#embeddings text")
    expected = cli_json("embeddings", "--run", runs_dir / "text")
    assert page.locator("#embeddings text").count() >= len(expected["tokens"])
    total = cli_json("params", "--run", runs_dir / "text")["total"]
    assert f"{total:,}" in page.inner_text("#params")


@browser_test
def test_the_tabs_answer_the_keyboard_and_the_page_fits_a_phone(page):
    page.select_option("#model", "text")
    page.focus("#tab-generate")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-surprise", "aria-selected") == "true"
    page.set_viewport_size({"width": 375, "height": 800})
    page.click("#tab-generate")
    page.fill("#prompt", PROMPT * 3)
    page.fill("#max-tokens", "80")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .tok.gen').length === 80")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.locator("#output .tok").evaluate_all("els => els.every(e => e.getBoundingClientRect().width > 0)")
    screenshot(page, "phone")
