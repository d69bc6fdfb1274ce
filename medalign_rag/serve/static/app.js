// medalign-rag's page: patients, timeline, ask (streamed), citations that open the cited events, compare.
// Plain DOM, no build step, nothing from another origin. Record text is only ever set with textContent:
// it is untrusted input as far as the browser is concerned.
"use strict";

const state = {
  health: null,
  patientQuery: "",
  patientOffset: 0,
  patientId: null,
  encounterOffset: 0,
  encounters: new Map(), // encounter_id -> {li, list, loaded, total, events: Map(event_id -> li)}
  answer: null,
  citedEvents: new Set(),
};

const $ = (id) => document.getElementById(id);
const PAGE_PATIENTS = 50;
const PAGE_ENCOUNTERS = 500;
const PAGE_EVENTS = 500;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// -- API --------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function authHeaders() {
  const token = sessionStorage.getItem("medalign-token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Content-Type": "application/json", ...authHeaders(), ...(options.headers || {}) },
  });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new ApiError(401, "this server needs its access token");
  }
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// Server-sent events over a POST (EventSource only does GET): yields {event, data}.
async function* postEvents(path, body) {
  const response = await api(path, { method: "POST", body: JSON.stringify(body) });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// -- formatting -------------------------------------------------------------------------------------

const dateOf = (iso) => (iso ? iso.slice(0, 10) : "");
const timeOf = (iso) => (iso && iso.length >= 16 ? iso.slice(11, 16) : "");
const number = (n) => (n == null ? "?" : Number(n).toLocaleString("en-US"));

function citationLabel(c) {
  const end = c.end && dateOf(c.end) !== dateOf(c.start) ? ` to ${dateOf(c.end)}` : "";
  return `${dateOf(c.start)}${end} · ${c.encounter_type} (${c.encounter_id})`;
}

// -- patients ---------------------------------------------------------------------------------------

async function loadPatients(append = false) {
  if (!append) state.patientOffset = 0;
  const q = encodeURIComponent(state.patientQuery);
  const page = await apiJson(`/api/patients?q=${q}&offset=${state.patientOffset}&limit=${PAGE_PATIENTS}`);
  const list = $("patient-list");
  if (!append) list.replaceChildren();
  for (const p of page.items) {
    const button = el("button", { type: "button", dataset: { patientId: p.patient_id }, onclick: () => selectPatient(p.patient_id) },
      el("span", { class: "pid", text: p.patient_id }),
      el("span", { class: "meta", text: `${p.encounters} enc · ${number(p.tokens)} tok${p.indexed ? " · indexed" : ""}` }));
    if (p.patient_id === state.patientId) button.setAttribute("aria-current", "true");
    list.append(el("li", {}, button));
  }
  state.patientOffset += page.items.length;
  $("patients-more").hidden = state.patientOffset >= page.total;
  if (!page.total) list.append(el("li", { class: "meta", text: "no patient id matches" }));
}

async function selectPatient(patientId) {
  state.patientId = patientId;
  for (const b of document.querySelectorAll("#patient-list button")) {
    if (b.dataset.patientId === patientId) b.setAttribute("aria-current", "true");
    else b.removeAttribute("aria-current");
  }
  $("filter-from").value = "";
  $("filter-to").value = "";
  clearAnswer();
  for (const id of ["question", "ask-button", "compare-button"]) $(id).disabled = false;
  $("question").placeholder = "Ask about this patient's record…";
  await loadTimeline();
}

// -- timeline ---------------------------------------------------------------------------------------

async function loadTimeline(append = false) {
  const patientId = state.patientId;
  if (!append) {
    state.encounterOffset = 0;
    state.encounters.clear();
    $("encounter-list").replaceChildren();
  }
  const params = new URLSearchParams({ offset: state.encounterOffset, limit: PAGE_ENCOUNTERS });
  if ($("filter-from").value) params.set("from", $("filter-from").value);
  if ($("filter-to").value) params.set("to", $("filter-to").value);
  setStatus(`loading ${patientId}…`);
  const timeline = await apiJson(`/api/patients/${encodeURIComponent(patientId)}/timeline?${params}`);
  if (patientId !== state.patientId) return;
  const s = timeline.summary;
  const d = timeline.demographics || {};
  $("patient-title").textContent = patientId;
  $("patient-facts").textContent = [
    d.gender, d.birthdate ? `born ${dateOf(d.birthdate)}` : null,
    `${s.encounters} encounters`, `${number(s.events)} events`, `${s.notes} notes`, `${number(s.tokens)} tokens`,
    s.first ? `${s.first} to ${s.last}` : null, timeline.indexed ? "indexed" : "index built on first question",
  ].filter(Boolean).join(" · ");
  $("timeline-filter").hidden = false;
  const list = $("encounter-list");
  for (const e of timeline.encounters) list.append(encounterItem(e));
  state.encounterOffset += timeline.encounters.length;
  $("encounters-more").hidden = state.encounterOffset >= timeline.total;
  markCitedEncounters();
  setStatus(`${patientId}: ${timeline.total} encounters shown`);
}

function encounterItem(e) {
  const list = el("ol", { class: "events", hidden: "" });
  const kinds = Object.entries(e.kinds).map(([k, n]) => `${n} ${k}`).join(", ");
  const head = el("button", { type: "button", class: "enc-head", "aria-expanded": "false" },
    el("span", { class: "date", text: dateOf(e.start) }),
    el("span", { class: "type", text: e.type }),
    el("span", { class: "count", text: `${e.events} events`, title: kinds }));
  const li = el("li", { class: "encounter", id: `enc-${state.encounters.size}`, dataset: { encounterId: e.encounter_id } }, head, list);
  const entry = { li, head, list, loaded: 0, total: e.events, events: new Map(), moreButton: null };
  head.addEventListener("click", () => toggleEncounter(e.encounter_id));
  state.encounters.set(e.encounter_id, entry);
  return li;
}

async function toggleEncounter(encounterId, open) {
  const entry = state.encounters.get(encounterId);
  const willOpen = open ?? entry.list.hidden;
  entry.list.hidden = !willOpen;
  entry.head.setAttribute("aria-expanded", String(willOpen));
  if (willOpen && entry.loaded === 0 && entry.total > 0) await loadEvents(encounterId);
}

async function loadEvents(encounterId) {
  const entry = state.encounters.get(encounterId);
  const params = new URLSearchParams({ encounter: encounterId, offset: entry.loaded, limit: PAGE_EVENTS });
  const page = await apiJson(`/api/patients/${encodeURIComponent(state.patientId)}/events?${params}`);
  if (entry.moreButton) entry.moreButton.remove();
  for (const ev of page.events) {
    const item = eventItem(ev);
    entry.events.set(ev.event_id, item);
    entry.list.append(item);
  }
  entry.loaded += page.events.length;
  if (entry.loaded < page.total) {
    entry.moreButton = el("button", { type: "button", class: "more-events", text: `more events (${page.total - entry.loaded} left)`,
      onclick: () => loadEvents(encounterId) });
    entry.list.append(el("li", {}, entry.moreButton));
  }
}

function eventItem(ev) {
  const what = el("span", { class: "what" });
  const isNote = ev.kind === "note" || (ev.text && ev.text.length > 120);
  const label = ev.name || ev.kind;
  if (isNote) {
    const text = ev.text || ev.value || "";
    const body = el("pre", { class: "note-text", hidden: "", text });
    const toggle = el("a", { href: "#", class: "note-toggle", text: `${label} — read`, onclick: (event) => {
      event.preventDefault();
      body.hidden = !body.hidden;
    } });
    what.append(toggle, body);
  } else {
    const value = [ev.value, ev.unit].filter(Boolean).join(" ");
    what.append(el("span", { text: value ? `${label}: ${value}` : label }));
    if (ev.text) what.append(el("span", { class: "code", text: ev.text }));
  }
  if (ev.code) what.append(el("span", { class: "code", text: ev.code }));
  const li = el("li", { class: "event", dataset: { eventId: ev.event_id } },
    el("span", { class: "time", text: timeOf(ev.timestamp) }),
    el("span", { class: "kind", text: ev.kind }),
    what);
  if (state.citedEvents.has(ev.event_id)) li.classList.add("cited");
  return li;
}

function markCitedEncounters() {
  const cited = state.answer ? state.answer.events_by_encounter || {} : {};
  for (const [encounterId, entry] of state.encounters) {
    const isCited = encounterId in cited;
    entry.li.classList.toggle("cited", isCited);
    const old = entry.head.querySelector(".cite-mark");
    if (old) old.remove();
    if (isCited) entry.head.append(el("span", { class: "cite-mark", text: `${cited[encounterId].length} cited` }));
    for (const [eventId, item] of entry.events) item.classList.toggle("cited", state.citedEvents.has(eventId));
  }
}

// A citation: open its encounter, load its events until every cited one is there, mark them, scroll to them.
async function showCitation(encounterId, link) {
  for (const a of document.querySelectorAll("a.citation.active")) a.classList.remove("active");
  if (link) link.classList.add("active");
  if (!state.encounters.has(encounterId)) {
    // Filtered out or not loaded yet: show every date, then page until the encounter is there.
    $("filter-from").value = "";
    $("filter-to").value = "";
    await loadTimeline();
    while (!state.encounters.has(encounterId) && !$("encounters-more").hidden) await loadTimeline(true);
  }
  const entry = state.encounters.get(encounterId);
  if (!entry) {
    setStatus(`encounter ${encounterId} is not in the timeline`, true);
    return;
  }
  await toggleEncounter(encounterId, true);
  const wanted = (state.answer && state.answer.events_by_encounter || {})[encounterId] || [];
  while (wanted.some((id) => !entry.events.has(id)) && entry.loaded < entry.total) await loadEvents(encounterId);
  markCitedEncounters();
  for (const item of document.querySelectorAll(".flash")) item.classList.remove("flash");
  const first = wanted.map((id) => entry.events.get(id)).find(Boolean);
  entry.li.classList.add("flash");
  for (const id of wanted) {
    const item = entry.events.get(id);
    if (!item) continue;
    item.classList.add("flash");
    const note = item.querySelector(".note-text");
    if (note) note.hidden = false;
  }
  (first || entry.li).scrollIntoView({ block: "center" });
  setStatus(`${wanted.length} cited event(s) in ${encounterId}`);
}

// -- asking -----------------------------------------------------------------------------------------

function askBody() {
  const body = {
    patient_id: state.patientId,
    question: $("question").value.trim(),
    strategy: $("strategy").value,
    budget: Number($("budget").value),
  };
  // "As of" a day includes that whole day.
  if ($("as-of").value) body.time_anchor = `${$("as-of").value}T23:59:59`;
  return body;
}

function clearAnswer() {
  state.answer = null;
  state.citedEvents = new Set();
  $("answer-panel").hidden = true;
  $("answer-text").textContent = "";
  $("citations").replaceChildren();
  $("context-text").textContent = "";
  markCitedEncounters();
}

function showContext(answer) {
  state.answer = answer;
  state.citedEvents = new Set(answer.event_ids);
  $("answer-panel").hidden = false;
  const encounters = answer.citations.length;
  const available = answer.available_tokens != null ? `, ${number(answer.available_tokens)} for the record` : "";
  $("context-summary").textContent =
    `Context the model reads: ${number(answer.context_tokens)} tokens of a ${number(answer.budget)}-token budget${available} · ` +
    `${answer.event_ids.length} events from ${encounters} encounters (${answer.strategy})`;
  $("context-text").textContent = answer.context || "";
  const list = $("citations");
  list.replaceChildren();
  for (const citation of answer.citations) list.append(citationItem(citation, answer));
  if (!answer.citations.length) list.append(el("li", { class: "meta", text: "nothing retrieved: the context is empty" }));
  markCitedEncounters();
}

function citationItem(citation, answer) {
  const count = ((answer.events_by_encounter || {})[citation.encounter_id] || []).length;
  const link = el("a", { href: "#", class: "citation", dataset: { encounterId: citation.encounter_id }, text: citationLabel(citation) });
  link.addEventListener("click", (event) => {
    event.preventDefault();
    state.answer = answer;
    state.citedEvents = new Set(answer.event_ids);
    showCitation(citation.encounter_id, link).catch(showError);
  });
  return el("li", {}, link, el("span", { class: "meta", text: ` ${count} event${count === 1 ? "" : "s"}` }));
}

function showFinal(answer) {
  showContext(answer);
  const text = $("answer-text");
  text.classList.remove("placeholder", "error");
  if (answer.answer == null) {
    text.classList.add("placeholder");
    text.textContent = "No model answers here (backend none): the citations and the context below are what a model would read.";
  } else {
    text.textContent = answer.answer || "(empty answer)";
  }
  const parts = [answer.backend];
  if (answer.completion_tokens != null) parts.push(`${answer.completion_tokens} tokens`);
  if (answer.latency_s != null) parts.push(`${answer.latency_s.toFixed(1)} s`);
  $("answer-meta").textContent = parts.join(" · ");
}

async function ask(event) {
  event.preventDefault();
  const body = askBody();
  if (!body.question) return;
  clearAnswer();
  $("ask-button").disabled = true;
  const text = $("answer-text");
  text.className = "";
  setStatus(`retrieving (${body.strategy}, ${number(body.budget)} tokens)…`);
  try {
    for await (const { event: kind, data } of postEvents("/api/ask/stream", body)) {
      if (kind === "context") {
        showContext(data);
        text.textContent = "";
        if (state.health.backend !== "none") setStatus("answering…");
      } else if (kind === "token") {
        text.textContent += data.text;
      } else if (kind === "answer") {
        showFinal(data);
        setStatus(`answered from ${data.event_ids.length} events`);
      } else if (kind === "error") {
        throw new ApiError(data.status, data.detail);
      }
    }
  } catch (error) {
    showError(error);
  } finally {
    $("ask-button").disabled = false;
  }
}

function showError(error) {
  setStatus(error.message || String(error), true);
  if (!$("answer-panel").hidden || error.status >= 500) {
    $("answer-panel").hidden = false;
    const text = $("answer-text");
    text.className = "error";
    text.textContent = error.message || String(error);
  }
}

async function compare() {
  const body = askBody();
  if (!body.question) {
    $("question").reportValidity();
    return;
  }
  const strategies = [body.strategy, $("compare-strategy").value];
  if (strategies[0] === strategies[1]) {
    setStatus("pick two different strategies to compare", true);
    return;
  }
  $("compare-button").disabled = true;
  setStatus(`comparing ${strategies.join(" and ")}…`);
  try {
    const { results } = await apiJson("/api/compare", {
      method: "POST",
      body: JSON.stringify({ ...body, strategy: undefined, strategies }),
    });
    const columns = $("compare-columns");
    columns.replaceChildren();
    $("compare-question").textContent = `${body.question} · ${number(body.budget)} tokens`;
    for (const result of results) {
      const others = new Set(results.filter((r) => r !== result).flatMap((r) => r.event_ids));
      const shared = result.event_ids.filter((id) => others.has(id)).length;
      const citations = el("ol");
      for (const citation of result.citations) {
        const item = citationItem(citation, result);
        item.querySelector("a").addEventListener("click", () => $("compare-dialog").close());
        citations.append(item);
      }
      columns.append(el("section", { class: "compare-column" },
        el("h3", { text: result.strategy }),
        el("p", { class: "meta", text: `${number(result.context_tokens)} tokens · ${result.event_ids.length} events ` +
          `(${shared} also in the other) · ${result.citations.length} encounters` }),
        el("div", { class: "compare-answer", text: result.answer == null ? "(no model: context only)" : result.answer }),
        el("h3", { text: "Citations" }), citations,
        el("h3", { text: "Context" }), el("pre", { class: "compare-context", text: result.context || "" })));
    }
    $("compare-dialog").showModal();
    setStatus("compared");
  } catch (error) {
    showError(error);
  } finally {
    $("compare-button").disabled = false;
  }
}

// -- start ------------------------------------------------------------------------------------------

function fillSelect(select, values, selected, label = (v) => v) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, text: label(v) })));
  select.value = String(selected);
}

async function start() {
  try {
    state.health = await apiJson("/api/health");
  } catch (error) {
    showError(error);
    return;
  }
  const h = state.health;
  $("backend").textContent = h.backend === "none" ? "no model (context only)" : `${h.backend}${h.streaming ? " · streaming" : ""}`;
  fillSelect($("strategy"), h.strategies, h.default_strategy);
  fillSelect($("compare-strategy"), h.strategies, h.strategies.includes("full") ? "full" : h.strategies[0]);
  fillSelect($("budget"), h.budgets, h.budgets.includes(4096) ? 4096 : h.budgets[0], (b) => `${number(b)} tokens`);
  $("question").maxLength = h.max_question_chars;
  setStatus(`${h.patients} patients`);
  await loadPatients();
}

function wire() {
  let searchTimer = null;
  $("patient-search").addEventListener("input", (event) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => {
      state.patientQuery = event.target.value.trim();
      loadPatients().catch(showError);
    }, 200);
  });
  $("patients-more").addEventListener("click", () => loadPatients(true).catch(showError));
  $("encounters-more").addEventListener("click", () => loadTimeline(true).catch(showError));
  $("timeline-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadTimeline().catch(showError);
  });
  $("filter-clear").addEventListener("click", () => {
    $("filter-from").value = "";
    $("filter-to").value = "";
    loadTimeline().catch(showError);
  });
  $("ask-form").addEventListener("submit", ask);
  $("compare-button").addEventListener("click", () => compare());
  $("compare-close").addEventListener("click", () => $("compare-dialog").close());
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("medalign-token", $("token-input").value.trim());
    $("token-form").hidden = true;
    start();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  start();
});
