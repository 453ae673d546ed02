"""The playground's own JSON routes (/api/...): what the page at / draws. Every number comes from
the code behind the terminal commands: the next-token distribution and the attention from
inside.measure (`predict`, `attention`), the surprise from evaluate via inside.measure
(`surprise`), the runs from runs.table (`runs`), the parameters from params (`params`)."""

from __future__ import annotations

import asyncio
import codecs
import json
import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from ..data.tokenizer import token_label, token_texts
from ..inside import measure
from ..params import param_report
from ..rundir import RunDir
from ..runs.table import summarize_runs
from ..serving import Choice, Served, Settings, start_ids
from .state import Outbox, ServerState, http_error
from .v1 import MAX_TOKENS, SEED_MAX, Fields, drain

router = APIRouter(prefix="/api")
MAX_SHOW = 50  # candidates one inspection lists


class Shaping(Fields):
    model: str
    temperature: float = Field(0.8, ge=0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, ge=0, le=1)


class GenerateRequest(Shaping):
    prompt: str = ""
    max_tokens: int = Field(200, ge=1, le=MAX_TOKENS)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)


class InspectRequest(Shaping):
    ids: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    show: int = Field(10, ge=1, le=MAX_SHOW)


class SurpriseRequest(Fields):
    model: str
    text: str


def _state(request: Request) -> ServerState:
    return request.app.state.tinygpt


def _tokens(served: Served, ids: list[int]) -> list[dict]:
    """Each token as the page boxes it: its id, a visible label, and the text it completes."""
    tokenizer = served.ckpt.tokenizer
    return [{"id": i, "label": label, "text": text}
            for i, label, text in zip(ids, measure.token_labels(tokenizer, ids), token_texts(tokenizer, ids))]


@router.get("/models")
async def models(request: Request) -> dict:
    state = _state(request)
    found = []
    for name in state.store.names():
        try:
            served = await state.model(name)
        except Exception:  # a run with no checkpoint yet, or one that cannot be read: not listed
            continue
        c = served.model.config
        found.append({"id": name, "chat": served.end_of_turn is not None, "iteration": served.ckpt.iteration,
                      "n_params": served.model.num_params(), "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                      "block_size": c.block_size, "vocab_size": c.vocab_size,
                      "tokenizer": "char" if type(served.ckpt.tokenizer).__name__ == "Vocabulary" else "bpe"})
    return {"models": found}


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    """The tokens of one sample as they come, each with where the tokenizer cut it (SSE)."""
    state = _state(request)
    served = await state.model(body.model)
    tokenizer = served.ckpt.tokenizer
    prompt = tokenizer.encode(body.prompt) if body.prompt else start_ids(tokenizer)
    seed = body.seed if body.seed is not None else secrets.randbits(32)
    outbox = Outbox(asyncio.get_running_loop())
    queue = outbox.queue
    choice = Choice(served, prompt, Settings(body.max_tokens, body.temperature, body.top_k, body.top_p, seed, logprobs=None),
                    outbox.sender(0))
    state.scheduler.submit([choice])

    async def events():
        yield _event({"prompt": _tokens(served, prompt), "seed": seed})
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                for _, delta in await drain(queue):
                    if delta.error is not None:
                        yield _event({"error": {"message": delta.error.message}})
                        return
                    yield b"".join(_event({"token": {"id": info.id, "label": token_label(tokenizer, info.id),
                                                     "text": decoder.decode(tokenizer.token_bytes(info.id))}}) for info in delta.tokens)
                    if delta.finish_reason is not None:
                        yield _event({"done": True, "finish_reason": delta.finish_reason,
                                      "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(choice.tokens)}})
                        yield b"data: [DONE]\n\n"
                        return
        finally:
            choice.cancelled.set()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


@router.post("/inspect")
async def inspect(body: InspectRequest, request: Request) -> dict:
    """Why the token after `ids` came: the distribution it was drawn from and where the last
    position looked (every layer and head)."""
    state = _state(request)
    served = await state.model(body.model)
    tokenizer, block = served.ckpt.tokenizer, served.model.config.block_size
    if max(body.ids) >= tokenizer.size:
        raise http_error(400, f"token id {max(body.ids):,} is past the model's vocabulary of {tokenizer.size:,}", param="ids")
    context = body.ids[-block:]

    def look():
        shaped, raw = measure.predict(served.model, context, body.temperature, body.top_k, body.top_p)
        return measure.top_candidates(shaped, raw, body.show), measure.attention(served.model, context)

    candidates, weights = await state.compute(look)
    return {"context": [{"id": i, "label": label} for i, label in zip(context, measure.token_labels(tokenizer, context))],
            "dropped": len(body.ids) - len(context), "candidates": measure.candidates_report(tokenizer, candidates),
            "attention": {"layers": weights.shape[0], "heads": weights.shape[1], "weights": weights[:, :, -1, :].tolist()}}


@router.post("/surprise")
async def surprise(body: SurpriseRequest, request: Request) -> dict:
    state = _state(request)
    served = await state.model(body.model)
    result = await state.compute(lambda: measure.surprise(served.model, served.ckpt.tokenizer, body.text))
    return result.report(served.ckpt.tokenizer)


@router.get("/models/{name:path}/params")
async def params(name: str, request: Request) -> dict:
    served = await _state(request).model(name)
    return param_report(served.model.config).to_dict()


@router.get("/models/{name:path}/embeddings")
async def embeddings(name: str, request: Request) -> dict:
    state = _state(request)
    served = await state.model(name)
    return await state.compute(lambda: measure.embedding_report(served.model, served.ckpt.tokenizer))


@router.get("/runs")
def runs(request: Request) -> dict:
    state = _state(request)
    folders = state.runs()
    summaries, _ = summarize_runs(list(folders.values()))
    names = {path: name for name, path in folders.items()}
    return {"runs": [s.to_dict() | {"name": names[s.path], "path": str(s.path)} for s in summaries]}


@router.get("/runs/{name:path}/metrics")
async def metrics(name: str, request: Request, since: int = Query(0, ge=0)) -> dict:
    """The run's metrics.jsonl records from index `since` on: poll with `next` for new ones."""
    state = _state(request)
    folder = state.runs().get(name)
    if folder is None:
        raise http_error(404, f"no run {name!r} is served", code="model_not_found")
    run = RunDir(folder)
    records = run.read_metrics()
    status = run.read_status().get("status", "unknown")
    try:
        await state.model(name)  # a new checkpoint since the last look: loaded, and a sample drawn from it
    except Exception:  # none yet, or being replaced: the records still come
        pass
    return {"records": records[since:], "next": len(records), "status": status, "samples": state.store.samples(name)}

