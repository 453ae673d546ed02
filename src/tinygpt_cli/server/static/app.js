// The tinygpt serve playground: one page, five tabs, talking to the same-origin JSON API.
// Everything that comes from the model or the user is written with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const KEY_STORAGE = "tinygpt-api-key";
const TABS = ["generate", "surprise", "runs", "chat", "model"];
const SHOW_CANDIDATES = 10;
const MAX_MAP_POINTS = 2000;  // the embedding map plots and labels at most this many tokens (the first ids)
const CHART = { width: 640, height: 320, left: 56, right: 16, top: 16, bottom: 44 };

const state = {
  tab: "generate",
  models: [],
  keyPrompt: null,      // the pending "enter your key" promise, shared by concurrent requests
  gen: null,            // {promptIds, genIds, settings, seed, controller}
  why: null,            // {ids, drawnId, context, attention, seq}
  run: null,            // {name, since, train, val, status, samplesShown, timer, busy}
  chat: [],             // [{role, content}] of the finished turns
  chatController: null,
  modelData: new Map(), // model id -> {params, embeddings}
};

// ---------- small helpers ----------

// A new element with these attributes and, when given, this text (never parsed as HTML).
function make(namespace, tag, attrs = {}, text) {
  const node = document.createElementNS(namespace, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const el = (tag, attrs, text) => make("http://www.w3.org/1999/xhtml", tag, attrs, text);
const svgEl = (tag, attrs, text) => make(SVG_NS, tag, attrs, text);

const percent = (p) => `${(p * 100).toFixed(1)}%`;
const fixed = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));

function readNumber(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function debounce(fn, ms) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

// Calls `handler(target)` when an element matching `selector` inside `container` is clicked
// or gets Enter/Space while focused.
function onActivate(container, selector, handler) {
  container.addEventListener("click", (event) => {
    const target = event.target.closest(selector);
    if (target) handler(target);
  });
  container.addEventListener("keydown", (event) => {
    const target = event.target.closest(selector);
    if (!target || (event.key !== "Enter" && event.key !== " ")) return;
    event.preventDefault();
    handler(target);
  });
}

// ---------- errors ----------

function showError(err) {
  $("error").textContent = err.message || String(err);
}

function clearError() {
  $("error").textContent = "";
}

// Wraps an async function so that its failure shows in the error line (a stopped fetch is no error).
function reporting(fn) {
  return (...args) => fn(...args).catch((err) => {
    if (err.name !== "AbortError") showError(err);
  });
}

// ---------- requests ----------

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askKey() {
  if (!state.keyPrompt) {
    const form = $("key-form");
    form.hidden = false;
    $("api-key").focus();
    state.keyPrompt = new Promise((resolve) => {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
        form.hidden = true;
        state.keyPrompt = null;
        resolve();
      }, { once: true });
    });
  }
  return state.keyPrompt;
}

async function apiError(response) {
  try {
    const data = await response.json();
    if (data.error && data.error.message) return new Error(data.error.message);
  } catch (_) {
    // not the API's JSON error: fall back to the HTTP status below
  }
  return new Error(`${response.status} ${response.statusText}`);
}

// GET when body is undefined, else POST it as JSON. A 401 asks for the key once and retries.
async function request(path, body, signal) {
  const send = () => fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { ...authHeaders(), ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  let response = await send();
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    await askKey();
    response = await send();
  }
  if (!response.ok) {
    if (response.status === 401) sessionStorage.removeItem(KEY_STORAGE);
    throw await apiError(response);
  }
  return response;
}

async function getJSON(path, body) {
  return (await request(path, body)).json();
}

// POSTs body and calls onEvent with each Server-Sent Event's JSON until `data: [DONE]`.
async function stream(path, body, onEvent, signal) {
  const response = await request(path, body, signal);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const blocks = buffer.split(/\r?\n\r?\n/);
    buffer = blocks.pop();
    for (const block of blocks) {
      const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
        .map((line) => line.replace(/^data: ?/, "")).join("\n");
      if (data === "") continue;
      if (data === "[DONE]") {
        reader.cancel();
        return;
      }
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      onEvent(event);
    }
  }
}

// ---------- tabs ----------

function selectTab(name) {
  for (const tab of TABS) {
    $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
    $(`panel-${tab}`).hidden = tab !== name;
  }
  state.tab = name;
  if (name === "runs") reporting(showRuns)();
  else stopPolling();
  if (name === "model") reporting(loadModelTab)();
}

function setupTabs() {
  const nav = document.querySelector('[role="tablist"]');
  nav.addEventListener("click", (event) => {
    const tab = event.target.closest('[role="tab"]');
    if (tab) selectTab(tab.id.slice("tab-".length));
  });
  nav.addEventListener("keydown", (event) => {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    event.preventDefault();
    const here = TABS.indexOf(document.activeElement.id.slice("tab-".length));
    const next = TABS[(here + (event.key === "ArrowRight" ? 1 : TABS.length - 1)) % TABS.length];
    $(`tab-${next}`).focus();
    selectTab(next);
  });
}

// ---------- models ----------

function currentModel() {
  return state.models.find((m) => m.id === $("model").value);
}

async function loadModels() {
  const { models } = await getJSON("/api/models");
  state.models = models;
  $("model").replaceChildren(...models.map((m) => el("option", { value: m.id }, m.chat ? `${m.id} (chat)` : m.id)));
  onModelChange();
}

function describeModel(m) {
  return `${count(m.n_params)} parameters: ${m.n_layer} layers × ${m.n_head} heads, width ${m.n_embd}; ` +
    `sees ${m.block_size} tokens at a time; ${m.vocab_size} ${m.tokenizer} tokens; trained ${count(m.iteration)} iterations.`;
}

function onModelChange() {
  const model = currentModel();
  $("model-info").textContent = model ? describeModel(model) : "No model is being served.";
  resetGenerate();
  newChat();
  updateChatNote();
  if (state.tab === "model") reporting(loadModelTab)();
}

// ---------- generate ----------

function generationSettings() {
  return {
    temperature: readNumber("temperature"),
    top_k: readNumber("top-k"),
    top_p: readNumber("top-p"),
    seed: readNumber("seed"),
    max_tokens: readNumber("max-tokens"),
  };
}

function setGenerating(on) {
  $("generate").disabled = on;
  $("stop").disabled = !on;
}

function stopGeneration() {
  if (state.gen) state.gen.controller.abort();
}

function resetGenerate() {
  stopGeneration();
  state.gen = null;
  state.why = null;
  $("output").replaceChildren();
  $("gen-info").textContent = "";
  $("why").hidden = true;
}

function tokenBox(token, className) {
  return el("span", { class: className, title: `token id ${token.id}` }, token.label);
}

// A token box, then a line break when the token's text holds a newline.
function appendToken(container, box, text) {
  container.append(box);
  if (text.includes("\n")) container.append(el("br"));
}

function onGenerateEvent(gen, event) {
  const output = $("output");
  if (event.prompt) {
    gen.seed = event.seed;
    for (const token of event.prompt) {
      gen.promptIds.push(token.id);
      appendToken(output, tokenBox(token, "tok prompt"), token.text);
    }
  } else if (event.token) {
    const box = tokenBox(event.token, "tok gen");
    box.dataset.index = gen.genIds.length;
    box.dataset.id = event.token.id;
    box.tabIndex = 0;
    box.setAttribute("role", "button");
    gen.genIds.push(event.token.id);
    appendToken(output, box, event.token.text);
  } else if (event.done) {
    const why = event.finish_reason === "length" ? "reached the token limit" : "the model ended the text";
    $("gen-info").textContent = `${event.usage.completion_tokens} tokens after a ${event.usage.prompt_tokens}-token prompt; ` +
      `${why}; seed ${gen.seed} (type it in Seed to get the same text again).`;
  }
}

async function generate() {
  clearError();
  resetGenerate();
  const settings = generationSettings();
  const gen = { promptIds: [], genIds: [], settings, seed: null, controller: new AbortController() };
  state.gen = gen;
  setGenerating(true);
  $("gen-info").textContent = "generating…";
  try {
    await stream("/api/generate", { model: $("model").value, prompt: $("prompt").value, ...settings },
      (event) => onGenerateEvent(gen, event), gen.controller.signal);
  } catch (err) {
    if (state.gen === gen) $("gen-info").textContent = err.name === "AbortError" ? "stopped." : "";
    throw err;
  } finally {
    if (state.gen === gen || state.gen === null) setGenerating(false);
  }
}

// ---------- why this token ----------

function whySettings() {
  const topK = Number($("why-top-k").value);
  const topP = Number($("why-top-p").value);
  return { temperature: Number($("why-temperature").value), top_k: topK > 0 ? topK : null, top_p: topP < 1 ? topP : null };
}

function showSliderValues() {
  const s = whySettings();
  $("why-temperature-value").textContent = s.temperature === 0 ? "0 (always the top token)" : s.temperature.toFixed(2);
  $("why-top-k-value").textContent = s.top_k === null ? "off" : String(s.top_k);
  $("why-top-p-value").textContent = s.top_p === null ? "off" : s.top_p.toFixed(2);
}

function openWhy(box) {
  const gen = state.gen;
  const k = Number(box.dataset.index);
  for (const selected of $("output").querySelectorAll(".selected")) selected.classList.remove("selected");
  box.classList.add("selected");
  state.why = { ids: [...gen.promptIds, ...gen.genIds.slice(0, k)], drawnId: gen.genIds[k], context: [], attention: null, seq: 0 };
  $("why-top-k").max = currentModel().vocab_size;
  $("why-temperature").value = gen.settings.temperature === null ? 1 : gen.settings.temperature;
  $("why-top-k").value = gen.settings.top_k === null ? 0 : gen.settings.top_k;
  $("why-top-p").value = gen.settings.top_p === null ? 1 : gen.settings.top_p;
  showSliderValues();
  $("why-title").textContent = `Why “${box.textContent}” (generated token ${k + 1})`;
  $("why").hidden = false;
  reporting(inspect)();
}

async function inspect() {
  const why = state.why;
  if (!why) return;  // the panel was reset while a slider change waited
  const seq = ++why.seq;
  const data = await getJSON("/api/inspect", {
    model: $("model").value, ids: why.ids, ...whySettings(), show: SHOW_CANDIDATES,
  });
  if (state.why !== why || seq !== why.seq) return;  // a newer question is under way
  why.context = data.context;
  why.attention = data.attention;
  renderCandidates(data.candidates, why.drawnId);
  fillOptions($("layer"), data.attention.layers, data.attention.layers - 1);
  fillOptions($("head"), data.attention.heads, 0);
  renderAttention();
  $("why-note").textContent = whyNote(data, why.drawnId);
}

function whyNote(data, drawnId) {
  const notes = [];
  if (!data.candidates.some((c) => c.id === drawnId)) {
    notes.push(`The drawn token is not among the ${SHOW_CANDIDATES} likeliest: a rare draw.`);
  }
  if (data.dropped > 0) {
    notes.push(`${data.dropped} earlier tokens did not fit in the model's window and were not seen.`);
  }
  return notes.join(" ");
}

function candidateBars(candidate) {
  const bars = el("span", { class: "bars", "aria-hidden": "true" });
  for (const [className, p] of [["bar model", candidate.model_probability], ["bar after", candidate.probability]]) {
    const bar = el("span", { class: className });
    bar.style.width = percent(p);
    bars.append(bar);
  }
  return bars;
}

function renderCandidates(candidates, drawnId) {
  $("candidates").replaceChildren(...candidates.map((c) => {
    const row = el("div", { class: c.id === drawnId ? "cand drawn" : "cand", "data-id": c.id });
    row.append(
      el("span", { class: "cand-token" }, c.token),
      candidateBars(c),
      el("span", { class: "cand-model", title: "the model's own probability" }, percent(c.model_probability)),
      el("span", { class: "cand-prob", title: "after temperature, top-k and top-p" }, percent(c.probability)),
    );
    return row;
  }));
}

// Gives a <select> the options 0..n-1, keeping its choice when the count did not change.
function fillOptions(select, n, initial) {
  if (select.options.length === n) return;
  select.replaceChildren(...Array.from({ length: n }, (_, i) => el("option", { value: i }, String(i))));
  select.value = String(initial);
}

function renderAttention() {
  const { context, attention } = state.why;
  const weights = attention.weights[Number($("layer").value)][Number($("head").value)];
  const strongest = extent(weights)[1] || 1;
  $("attention").replaceChildren(...context.map((token, s) => {
    const weight = weights[s];
    const shade = weight / strongest;
    const span = el("span", { class: shade > 0.55 ? "att dark" : "att", "data-weight": weight,
      title: `${percent(weight)} of the attention` }, token.label);
    span.style.backgroundColor = `rgba(37, 99, 235, ${shade.toFixed(3)})`;
    return span;
  }));
}

// ---------- surprise ----------

function surpriseSpan(text, loss, highest) {
  const span = el("span", { class: "sur" }, text);
  if (loss === null) {
    span.title = "the first token: context only, not scored";
    return span;
  }
  span.dataset.loss = loss;
  span.title = `${loss.toFixed(3)} nats`;
  span.style.backgroundColor = `rgba(220, 30, 30, ${(0.85 * loss / highest).toFixed(3)})`;
  return span;
}

async function surprise() {
  clearError();
  const data = await getJSON("/api/surprise", { model: $("model").value, text: $("surprise-text").value });
  const scored = data.losses.filter((loss) => loss !== null);
  const highest = Math.max(extent(scored)[1], 1e-9);
  $("surprise-out").replaceChildren(...data.tokens.map((text, i) => surpriseSpan(text, data.losses[i], highest)));
  $("surprise-summary").textContent = `${scored.length} tokens scored: loss ${fixed(data.loss)} nats per token, ` +
    `${fixed(data.bits_per_byte)} bits per byte. Darkest red = ${highest.toFixed(2)} nats.`;
  $("surprise-detail").textContent = "Click a token for its loss.";
}

function showSurpriseDetail(span) {
  $("surprise-detail").textContent = `“${span.textContent}”: ${span.title}`;
}

// ---------- runs ----------

function runRow(run) {
  const row = el("tr", { "data-run": run.name, tabindex: 0 });
  row.classList.toggle("selected", state.run !== null && state.run.name === run.name);
  const iteration = run.iteration === null || run.iteration === undefined ? "–"
    : count(run.iteration) + (run.max_iters ? ` / ${count(run.max_iters)}` : "");
  row.append(
    el("td", {}, run.name),
    el("td", {}, run.status),
    el("td", {}, iteration),
    el("td", {}, fixed(run.best_val_loss)),
    el("td", {}, count(run.n_params)),
  );
  return row;
}

async function loadRuns() {
  const { runs } = await getJSON("/api/runs");
  $("runs-table").tBodies[0].replaceChildren(...runs.map(runRow));
  return runs;
}

async function showRuns() {
  const runs = await loadRuns();
  if (state.run) pollRun(state.run);
  else if (runs.length) selectRun((runs.find((r) => r.status === "running") || runs[0]).name);
  else $("curve-title").textContent = "No runs yet: train one with `tinygpt train`.";
}

function selectRun(name) {
  stopPolling();
  for (const row of $("runs-table").tBodies[0].rows) row.classList.toggle("selected", row.dataset.run === name);
  state.run = { name, since: 0, train: [], val: [], status: null, samplesShown: -1, timer: null, busy: false };
  $("curve-title").textContent = `Loss of ${name}`;
  $("samples").replaceChildren();
  drawCurve(state.run);
  pollRun(state.run);
}

function stopPolling() {
  if (state.run) clearTimeout(state.run.timer);
}

// Fetches the run's new records, redraws, and polls again: every 1 s while it runs, 5 s otherwise.
async function pollRun(run) {
  clearTimeout(run.timer);
  if (run.busy) return;  // the poll in flight schedules the next one
  run.busy = true;
  try {
    const data = await getJSON(`/api/runs/${encodeURIComponent(run.name)}/metrics?since=${run.since}`);
    if (state.run !== run) return;
    addRecords(run, data);
    drawCurve(run);
    renderSamples(run, data.samples || []);
  } catch (err) {
    showError(err);
  } finally {
    run.busy = false;
  }
  if (state.run === run && state.tab === "runs") {
    run.timer = setTimeout(() => pollRun(run), run.status === "running" ? 1000 : 5000);
  }
}

function addRecords(run, data) {
  for (const record of data.records) {
    if (typeof record.loss === "number") run.train.push([record.iter, record.loss]);
    if (typeof record.val_loss === "number") run.val.push([record.iter, record.val_loss]);
  }
  run.since = data.next;
  if (data.status === "running" || (run.status !== null && run.status !== data.status)) reporting(loadRuns)();  // the table is stale
  run.status = data.status;
  const last = [...run.train, ...run.val].reduce((most, [iter]) => Math.max(most, iter), 0);
  $("curve-title").textContent = `Loss of ${run.name}: ${data.status}, iteration ${count(last)}`;
}

// A linear map from [d0, d1] to [r0, r1]; its `domain` is kept for the ticks.
function linear([d0, d1], r0, r1) {
  const [lo, hi] = d0 === d1 ? [d0 - 0.5, d1 + 0.5] : [d0, d1];
  const map = (v) => r0 + ((v - lo) / (hi - lo)) * (r1 - r0);
  map.domain = [lo, hi];
  return map;
}

// About five round values inside the domain, as [value, label].
function ticks([lo, hi]) {
  const raw = (hi - lo) / 5;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  const out = [];
  for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) out.push([i * step, (i * step).toFixed(digits)]);
  return out;
}

function drawAxes(svg, x, y) {
  const { width, height, left, right, top, bottom } = CHART;
  for (const [value, label] of ticks(x.domain)) {
    svg.append(svgEl("line", { class: "grid", x1: x(value), x2: x(value), y1: top, y2: height - bottom }),
      svgEl("text", { class: "tick", x: x(value), y: height - bottom + 16, "text-anchor": "middle" }, label));
  }
  for (const [value, label] of ticks(y.domain)) {
    svg.append(svgEl("line", { class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value) }),
      svgEl("text", { class: "tick", x: left - 6, y: y(value) + 4, "text-anchor": "end" }, label));
  }
  svg.append(
    svgEl("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }),
    svgEl("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }),
    svgEl("text", { class: "axis-title", x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle" }, "iteration"),
    svgEl("text", { class: "axis-title", x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(top + height - bottom) / 2})` }, "loss (nats per token)"),
  );
}

function drawLegend(svg) {
  const x = CHART.width - CHART.right - 150;
  [["train", "train loss"], ["val", "val loss"]].forEach(([className, label], i) => {
    const y = CHART.top + 12 + i * 18;
    svg.append(svgEl("line", { class: className, x1: x, x2: x + 24, y1: y, y2: y }),
      svgEl("text", { class: "tick", x: x + 30, y: y + 4 }, label));
  });
}

function drawCurve(run) {
  const svg = $("curve");
  svg.replaceChildren();
  const all = [...run.train, ...run.val];
  const [ylo, yhi] = all.length ? extent(all.map((p) => p[1])) : [0, 1];
  const pad = (yhi - ylo) * 0.05;
  const x = linear(all.length ? extent(all.map((p) => p[0])) : [0, 1], CHART.left, CHART.width - CHART.right);
  const y = linear([ylo - pad, yhi + pad], CHART.height - CHART.bottom, CHART.top);
  drawAxes(svg, x, y);
  if (all.length === 0) {
    svg.append(svgEl("text", { class: "tick", x: CHART.width / 2, y: CHART.height / 2, "text-anchor": "middle" },
      "no loss recorded yet"));
  }
  for (const [className, series] of [["train", run.train], ["val", run.val]]) {
    const points = series.map(([i, loss]) => `${x(i).toFixed(1)},${y(loss).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", { class: className, points, "data-points": series.length }));
  }
  for (const [i, loss] of run.val) svg.append(svgEl("circle", { class: "val-dot", cx: x(i), cy: y(loss), r: 3 }));
  drawLegend(svg);
}

function renderSamples(run, samples) {
  if (samples.length === run.samplesShown) return;
  run.samplesShown = samples.length;
  $("samples").replaceChildren(...samples.slice().reverse().map((sample) => {
    const figure = el("figure", { class: "sample" });
    figure.append(el("figcaption", {}, `drawn from the best checkpoint at iteration ${count(sample.iteration)}`),
      el("pre", {}, sample.text));
    return figure;
  }));
}

// ---------- chat ----------

function updateChatNote() {
  const isChat = Boolean(currentModel() && currentModel().chat);
  $("chat-note").hidden = isChat;
  $("chat-input").disabled = !isChat;
  $("chat-send").disabled = !isChat || state.chatController !== null;
}

function newChat() {
  if (state.chatController) state.chatController.abort();
  state.chat = [];
  $("chat-log").replaceChildren();
}

async function sendChat() {
  const input = $("chat-input");
  const content = input.value.trim();
  if (content === "" || state.chatController || $("chat-send").disabled) return;
  clearError();
  const messages = [...state.chat, { role: "user", content }];
  const log = $("chat-log");
  const question = el("div", { class: "msg user" }, content);
  const answer = el("div", { class: "msg assistant" }, "…");
  log.append(question, answer);
  log.scrollTop = log.scrollHeight;
  input.value = "";
  const controller = new AbortController();
  state.chatController = controller;
  updateChatNote();
  let text = "";
  const body = { model: $("model").value, messages, stream: true,
    temperature: readNumber("chat-temperature"), max_tokens: readNumber("chat-max-tokens") };
  try {
    await stream("/v1/chat/completions", body, (event) => {
      const delta = event.choices && event.choices[0] && event.choices[0].delta;
      if (!delta || !delta.content) return;
      text += delta.content;
      answer.textContent = text;
      log.scrollTop = log.scrollHeight;
    }, controller.signal);
    if (text === "") answer.textContent = "(no answer)";
    state.chat = [...messages, { role: "assistant", content: text }];
  } catch (err) {
    question.remove();
    answer.remove();
    if (!controller.signal.aborted) input.value = content;  // give the message back to retry
    throw err;
  } finally {
    if (state.chatController === controller) state.chatController = null;
    updateChatNote();
  }
}

function onChatKey(event) {
  if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
  event.preventDefault();
  reporting(sendChat)();
}

// ---------- model ----------

async function modelData(id) {
  if (!state.modelData.has(id)) {
    const path = `/api/models/${encodeURIComponent(id)}`;
    const [params, embeddings] = await Promise.all([getJSON(`${path}/params`), getJSON(`${path}/embeddings`)]);
    state.modelData.set(id, { params, embeddings });
  }
  return state.modelData.get(id);
}

async function loadModelTab() {
  const id = $("model").value;
  if (!id) return;
  const { params, embeddings } = await modelData(id);
  if ($("model").value !== id) return;  // the user picked another model meanwhile
  renderParams(params);
  renderEmbeddings(embeddings);
}

// The report's rows, each with the count it adds to the total: `rows` as given, or (the
// `tinygpt params --json` layout) embedding, one block's rows times n_layer, then the head.
function paramRows(report) {
  if (report.rows) return report.rows.map((r) => ({ ...r, total: r.count }));
  const layers = report.config ? report.config.n_layer : 1;
  return [
    ...report.embedding.map((r) => ({ ...r, total: r.count })),
    ...report.block.map((r) => ({ ...r, name: `${r.name} (× ${layers} blocks)`, total: r.count * layers })),
    ...report.head.map((r) => ({ ...r, total: r.count })),
  ];
}

function paramRow(name, shape, total, share, note) {
  const row = el("tr");
  const bar = el("span", { class: "share-bar" });
  bar.style.width = percent(share);
  const shareCell = el("td", { class: "share" });
  shareCell.append(bar, el("span", {}, percent(share)));
  const nameCell = el("td", {}, name);
  if (note) nameCell.append(el("small", { class: "muted" }, ` ${note}`));
  row.append(nameCell, el("td", {}, shape), el("td", { class: "num" }, count(total)), shareCell);
  return row;
}

function renderParams(report) {
  const rows = paramRows(report).map((r) => paramRow(r.name, Array.isArray(r.shape) ? r.shape.join(" × ") : String(r.shape),
    r.total, report.total ? r.total / report.total : 0, r.note));
  const totalRow = paramRow("total", "", report.total, 1, "");
  totalRow.classList.add("total");
  $("params").tBodies[0].replaceChildren(...rows, totalRow);
}

function renderEmbeddings({ tokens, coordinates, explained_variance: explained }) {
  const n = Math.min(tokens.length, MAX_MAP_POINTS);
  const points = coordinates.slice(0, n);
  const x = linear(extent(points.map((p) => p[0])), 40, 560);
  const y = linear(extent(points.map((p) => p[1])), 560, 20);
  const svg = $("embeddings");
  svg.replaceChildren(
    svgEl("text", { class: "axis-title", x: 300, y: 594, "text-anchor": "middle" }, `first principal axis (${percent(explained[0])} of the variance)`),
    svgEl("text", { class: "axis-title", x: 12, y: 300, "text-anchor": "middle", transform: "rotate(-90 12 300)" },
      `second principal axis (${percent(explained[1])})`),
  );
  points.forEach(([px, py], i) => {
    svg.append(svgEl("circle", { class: "point", cx: x(px), cy: y(py), r: 2.5 }),
      svgEl("text", { class: "point-label", x: x(px) + 4, y: y(py) + 4 }, tokens[i]));
  });
  $("embeddings-note").textContent = n < tokens.length ? `Showing the first ${n} of ${tokens.length} tokens.` : `${n} tokens.`;
}

// ---------- start ----------

function bindEvents() {
  $("model").addEventListener("change", onModelChange);
  $("generate").addEventListener("click", reporting(generate));
  $("stop").addEventListener("click", stopGeneration);
  onActivate($("output"), ".tok.gen", openWhy);
  const requery = debounce(reporting(inspect), 150);
  for (const id of ["why-temperature", "why-top-k", "why-top-p"]) {
    $(id).addEventListener("input", () => {
      showSliderValues();
      requery();
    });
  }
  $("layer").addEventListener("change", renderAttention);
  $("head").addEventListener("change", renderAttention);
  $("why-close").addEventListener("click", () => { $("why").hidden = true; });
  $("surprise-go").addEventListener("click", reporting(surprise));
  onActivate($("surprise-out"), ".sur", showSurpriseDetail);
  onActivate($("runs-table").tBodies[0], "tr[data-run]", (row) => selectRun(row.dataset.run));
  $("chat-input").addEventListener("keydown", onChatKey);
  $("chat-send").addEventListener("click", reporting(sendChat));
  $("chat-new").addEventListener("click", newChat);
}

setupTabs();
bindEvents();
reporting(loadModels)();
