// The ops console: plain JS against the service's own API, no build step, nothing external.
//
// Security rules this file keeps:
// - the management token lives only in the `token` variable below: never in localStorage,
//   sessionStorage, cookies or the URL, so closing or reloading the page forgets it;
// - everything from the server (versions, audit reasons, station names) reaches the page as
//   text (textContent / SVG text nodes), never as HTML;
// - requests go to this origin only (the page's CSP says so too) and send no cookies.
"use strict";

let token = null;
let actor = "";
let served = null; // the /readyz body while a model is served

const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ small DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function show(container, ...children) {
  container.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function badge(text, kind) {
  return el("span", { class: `badge ${kind}` }, text);
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
const short = (sha) => (sha ? sha.slice(0, 12) : "–");
// An audit entry's evidence on one line, cut short (the full entry: GET /v1/audit).
const compactJSON = (value, limit = 160) => {
  const text = JSON.stringify(value);
  return text.length <= limit ? text : `${text.slice(0, limit - 1)}…`;
};

// ------------------------------------------------------------------ the API

async function api(path, { method = "GET", json, form, admin = false, headers = {} } = {}) {
  const sent = { ...headers };
  let body;
  if (admin && token) sent["Authorization"] = `Bearer ${token}`;
  if (admin && actor) sent["X-Actor"] = actor;
  if (json !== undefined) {
    sent["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // the browser writes the multipart boundary
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body, cache: "no-store", credentials: "omit" });
  } catch (err) {
    return { ok: false, status: 0, body: { error: "network_error", message: `the service did not answer: ${err}` } };
  }
  const text = await response.text();
  let data;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: "not_json", message: text.slice(0, 300) };
  }
  return { ok: response.ok, status: response.status, body: data };
}

// The service's JSON error as it came: status, code and message, then the body itself.
function errorBox(result) {
  const body = result.body || {};
  const code = body.error || "error";
  const message = body.message || "";
  return el(
    "div",
    { class: "error", role: "alert" },
    el("strong", {}, `${result.status} ${code}`),
    message ? `: ${message}` : "",
    el("pre", {}, JSON.stringify(body, null, 2)),
  );
}

function needsToken(what) {
  return el("p", { class: "muted" }, `Enter the management token above to see ${what}.`);
}

// ------------------------------------------------------------------ serving (no token)

async function refreshServing() {
  const r = await api("/readyz");
  const b = r.body || {};
  served = r.ok ? b : null;
  const follow = b.store || {};
  const state = r.ok ? badge("ready", "ok") : badge("not ready", "bad");
  const rows = [
    ["state", el("span", { id: "serving-state" }, state, r.ok ? "" : ` ${b.reason || b.message || ""}`)],
    ["version", el("strong", { id: "serving-version" }, b.version || "–")],
    ["manifest sha256", el("code", {}, short(b.manifest_sha256))],
    ["parity at load", r.ok ? `passed, max abs diff ${b.parity_max_abs_diff}` : "–"],
    ["workers", b.workers ?? "–"],
    ["following the store", follow.healthy === false ? badge(`failing: ${follow.error || ""}`, "bad") : "ok"],
  ];
  const refused = Object.entries(b.refused || {});
  if (refused.length) rows.push(["refused", refused.map(([v, e]) => `${v}: ${e}`).join("; ")]);
  $("serving-facts").replaceWith(Object.assign(facts(rows), { id: "serving-facts" }));
}

async function runParity() {
  show($("parity-result"), el("p", { class: "muted" }, "running the reference images through the service…"));
  const r = await api("/v1/parity");
  show($("parity-result"), r.status === 200 || r.status === 409 ? parityLine(r.body) : errorBox(r));
}

function parityLine(p) {
  const text = `${p.version}: ${p.images.length} reference images, max abs diff ${p.max_abs_diff} (tolerance ${p.tolerance})`;
  return el("p", {}, badge(p.passed ? "parity passed" : "parity FAILED", p.passed ? "ok" : "bad"), " ", text);
}

// ------------------------------------------------------------------ versions (token)

async function refreshVersions() {
  if (!token) {
    show($("versions-body"), needsToken("the stored versions"));
    return false;
  }
  const r = await api("/v1/models", { admin: true });
  if (!r.ok) {
    show($("versions-body"), errorBox(r));
    return r;
  }
  const list = $("version-list");
  list.replaceChildren(...r.body.versions.map((v) => el("option", { value: v.version })));
  const rows = r.body.versions.map((v) => {
    const state = [];
    if (v.active) state.push(badge("active", "ok"));
    if (v.served) state.push(badge("served here", "info"));
    const parityCell = el("td", { class: "parity" });
    if (v.served && served) {
      parityCell.append(badge("passed", "ok"), ` at load, max diff ${served.parity_max_abs_diff}`);
    } else {
      const key = `${v.version}/${v.manifest_sha256}`;
      const button = el("button", { type: "button", class: "small" }, parityChecks.has(key) ? "Again" : "Check parity");
      button.addEventListener("click", () => checkParity(v.version, key, parityCell));
      const answer = parityChecks.get(key);
      parityCell.append(...(answer ? parityAnswer(answer) : []), " ", button);
    }
    const pick = el("button", { type: "button", class: "small" }, "Choose");
    pick.addEventListener("click", () => {
      $("change-version").value = v.version;
      $("change-reason").focus();
    });
    return el(
      "tr",
      { dataset: { version: v.version } },
      el("td", {}, el("strong", {}, v.version)),
      el("td", {}, v.name),
      el("td", {}, v.created_at),
      el("td", {}, el("code", {}, short(v.manifest_sha256))),
      el("td", {}, state),
      parityCell,
      el("td", {}, v.active ? "" : pick),
    );
  });
  const head = ["version", "name", "created", "manifest", "state", "parity", ""];
  show(
    $("versions-body"),
    el(
      "table",
      { id: "versions-table" },
      el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows),
    ),
    el("p", { class: "muted" }, `store's active pointer: ${r.body.active ?? "none"}; served here: ${r.body.served ?? "none"}`),
  );
  return r;
}

// Answers by version and manifest digest, so redrawing the table keeps them.
const parityChecks = new Map();

function parityAnswer(r) {
  if (r.status !== 200 && r.status !== 409) return [errorBox(r)];
  return [badge(r.body.passed ? "passed" : "FAILED", r.body.passed ? "ok" : "bad"), ` max diff ${r.body.max_abs_diff}`];
}

async function checkParity(version, key, cell) {
  show(cell, el("span", { class: "muted" }, "checking…"));
  parityChecks.set(key, await api(`/v1/parity?version=${encodeURIComponent(version)}`, { admin: true }));
  await refreshVersions();
}

// ------------------------------------------------------------------ activate / roll back

async function change(kind) {
  const out = $("change-result");
  const version = $("change-version").value.trim();
  const reason = $("change-reason").value.trim();
  if (kind === "activate" && !version) {
    show(out, el("p", { class: "error" }, "Choose the version to activate."));
    return;
  }
  if (!reason) {
    show(out, el("p", { class: "error" }, "Give a reason: it goes into the audit log."));
    return;
  }
  show(out, el("p", { class: "muted" }, `${kind === "activate" ? `activating ${version}` : "rolling back"}: verify, load, parity…`));
  // Sent with or without a token: the service decides, and its 401/403 is shown as it is.
  const path = kind === "activate" ? `/v1/models/${encodeURIComponent(version)}/activate` : "/v1/models/rollback";
  const r = await api(path, { method: "POST", json: { reason }, admin: true });
  if (!r.ok) {
    show(out, errorBox(r));
    return;
  }
  const b = r.body;
  show(
    out,
    el(
      "p",
      { class: "success" },
      badge("done", "ok"),
      ` now serving ${b.active} (was ${b.previous ?? "none"}), audit entry #${b.audit_seq}, `,
      `parity passed with max abs diff ${b.parity.max_abs_diff}`,
    ),
  );
  $("change-reason").value = "";
  await refreshAll();
}

// ------------------------------------------------------------------ audit log (token)

async function refreshAudit() {
  if (!token) {
    show($("audit-body"), needsToken("the audit log"));
    return;
  }
  const r = await api("/v1/audit?limit=50", { admin: true });
  if (!r.ok) {
    show($("audit-body"), errorBox(r));
    return;
  }
  const rows = r.body
    .slice()
    .reverse()
    .map((e) =>
      el(
        "tr",
        {},
        el("td", {}, String(e.seq)),
        el("td", {}, e.time),
        el("td", {}, e.action),
        el("td", {}, `${e.from_version ?? "–"} → ${e.to_version ?? "–"}`),
        el("td", {}, e.actor),
        el("td", {}, e.reason),
        el("td", { class: "evidence" }, e.evidence ? compactJSON(e.evidence) : ""),
      ),
    );
  const head = ["#", "time", "action", "from → to", "who", "reason", "evidence"];
  show(
    $("audit-body"),
    rows.length
      ? el(
          "table",
          { id: "audit-table" },
          el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
          el("tbody", {}, rows),
        )
      : el("p", { class: "muted" }, "The audit log is empty."),
  );
}

// ------------------------------------------------------------------ drift (token)

async function refreshDrift() {
  if (!token) {
    show($("drift-body"), needsToken("drift per station"));
    return;
  }
  const r = await api("/v1/monitoring", { admin: true });
  if (!r.ok) {
    show($("drift-body"), errorBox(r));
    return;
  }
  const m = r.body;
  const parts = [];
  if (!m.version) parts.push(el("p", { class: "muted" }, "No model is served yet."));
  else if (!m.reference)
    parts.push(el("p", { class: "muted" }, `${m.version} has no monitoring reference (exported before drift monitoring).`));
  else if (!m.stations.length)
    parts.push(
      el("p", { class: "muted" }, `No predictions for ${m.version} yet. Stations that send X-Station-ID appear here.`),
    );
  else {
    parts.push(
      el(
        "p",
        { class: "muted" },
        `${m.version}: the last ${m.window} images per station against the bundle's reference; `,
        `PSI above ${m.thresholds.psi_warn} is a warning, above ${m.thresholds.psi_alarm} an alarm, `,
        `no verdict before ${m.thresholds.min_images} images.`,
      ),
    );
    parts.push(el("div", { class: "stations" }, m.stations.map((s) => stationCard(s, m.thresholds))));
  }
  if (m.feedback) parts.push(feedbackFacts(m.feedback));
  parts.push(fleetFacts(m));
  show($("drift-body"), parts);
}

// Whose windows the stations above merge: every replica's last summary in the store, and
// how fresh it is (a stale one, stopped or cut off from the store, is left out).
function fleetFacts(m) {
  const rows = (m.replicas || []).map((r) =>
    el(
      "tr",
      { dataset: { replica: r.replica } },
      el("td", {}, r.replica, r.this ? " (this one)" : ""),
      el("td", {}, r.this ? "live" : `${fmt(r.age_s, 1)} s ago`),
      el("td", {}, r.stale ? badge("stale: left out", "warn") : badge("merged", "ok")),
      el("td", {}, r.served ?? "–"),
      el("td", {}, String(r.windows)),
    ),
  );
  const head = ["replica", "summary", "", "serving", "windows"];
  return el(
    "div",
    { class: "fleet" },
    el("h4", {}, m.fleet ? "The fleet's windows" : "This replica's windows only"),
    m.fleet_error ? el("p", { class: "error" }, `Other replicas not shown: ${m.fleet_error}.`) : null,
    el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows)),
    (m.skipped || []).length
      ? el("p", { class: "error" }, `Skipped summaries: ${m.skipped.map((s) => `${s.replica} (${s.reason})`).join("; ")}.`)
      : null,
  );
}

function stationCard(s, t) {
  let status;
  if (s.alarm) status = badge(`alarm: ${s.alarms.join(", ")}`, "bad");
  else if (s.warnings.length) status = badge(`warning: ${s.warnings.join(", ")}`, "warn");
  else if (!Object.keys(s.drift).length) status = badge(`no verdict yet: ${s.window} of ${t.min_images} images`, "muted");
  else status = badge("no shift", "ok");
  return el(
    "article",
    { class: "station", dataset: { station: s.station } },
    el("h3", {}, s.station, " ", status),
    facts([
      ["images", `${s.images} (window ${s.window})`],
      ["decision rate", `${pct(s.decision_rate)} (expected ${pct(s.expected_decision_rate)})`],
      ["retake rate", `${pct(s.retake_rate)} (expected ${pct(s.expected_retake_rate)})`],
    ]),
    qualityTable(s, t),
    Object.keys(s.drift).length ? psiChart(s.drift, t) : null,
    s.histograms ? histograms(s.histograms) : null,
  );
}

// The station's figures estimated from the served probabilities (no labels), each with its
// 95% interval, beside the same figures on inspectors' labels when some have arrived.
const QUALITY = [
  ["damage_rate", "damaged parcels"],
  ["precision", "precision"],
  ["recall", "recall"],
  ["false_alarm_rate", "false-alarm rate"],
  ["cost_per_parcel", "cost per parcel"],
];

function qualityTable(s, t) {
  const e = s.estimate;
  if (!e) return el("p", { class: "muted quality" }, `No quality estimate before ${t.min_images} judged images.`);
  const value = (name, x) => (name === "cost_per_parcel" ? fmt(x) : pct(x));
  const interval = (name) => {
    const i = e.intervals[name];
    return i ? `${value(name, i[0])} to ${value(name, i[1])}` : "–";
  };
  const l = s.labelled;
  const head = ["", "estimated", "95% interval", l ? `labelled (${l.labelled_images})` : "labelled"];
  const rows = QUALITY.map(([name, label]) =>
    el(
      "tr",
      { dataset: { figure: name } },
      el("th", {}, label),
      el("td", {}, value(name, e.figures[name])),
      el("td", {}, interval(name)),
      el("td", {}, l ? value(name, l[name]) : "–"),
    ),
  );
  const limit =
    e.cost_limit === null
      ? "No cost alarm: the bundle states no expected cost."
      : `Cost alarm when the whole interval lies above ${fmt(e.cost_limit)} per parcel ` +
        `(the bundle expects ${fmt(e.expected_cost_per_parcel)}).`;
  return el(
    "div",
    { class: "quality" },
    el("h4", {}, "Quality without labels ", e.cost_alarm ? badge("cost alarm", "bad") : null),
    el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))), el("tbody", {}, rows)),
    e.image_drift.length
      ? el("p", { class: "error" }, `Not to be trusted: the images drifted (${e.image_drift.join(", ")}).`)
      : null,
    el("p", { class: "muted" }, `From ${e.images} judged images. ${limit}`),
  );
}

// Horizontal PSI bars per feature, with the warning and alarm thresholds as dashed lines.
function psiChart(drift, t) {
  const features = Object.keys(drift);
  const rowH = 18;
  const left = 78;
  const width = 300;
  const plot = width - left - 44;
  const height = features.length * rowH + 16;
  // Capped at 1 (far past the alarm): one huge value must not squeeze the thresholds
  // into the axis. The number beside each bar is the real one.
  const top = Math.min(1, Math.max(t.psi_alarm * 2, ...Object.values(drift)));
  const x = (v) => left + (Math.min(v, top) / top) * plot;
  const chart = svg("svg", {
    class: "chart psi",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "population stability index per feature",
  });
  features.forEach((f, i) => {
    const v = drift[f];
    const y = i * rowH + 4;
    const kind = v > t.psi_alarm ? "bad" : v > t.psi_warn ? "warn" : "ok";
    chart.append(svg("text", { x: left - 6, y: y + 11, "text-anchor": "end", class: "label" }, f));
    chart.append(svg("rect", { x: left, y, width: Math.max(1, x(v) - left), height: rowH - 6, class: `bar ${kind}` }));
    chart.append(svg("text", { x: x(v) + 4, y: y + 11, class: "value" }, fmt(v, 3)));
  });
  for (const [v, name] of [
    [t.psi_warn, "warn"],
    [t.psi_alarm, "alarm"],
  ]) {
    chart.append(svg("line", { x1: x(v), x2: x(v), y1: 0, y2: height - 12, class: `threshold ${name}` }));
    chart.append(svg("text", { x: x(v), y: height - 2, "text-anchor": name === "warn" ? "end" : "start", class: "axis" }, v));
  }
  return el("div", { class: "chart-box" }, el("h4", {}, "PSI per feature"), chart);
}

// Small multiples: the reference share of each quantile bin (grey) and the live share (blue).
function histograms(hists) {
  const boxes = Object.entries(hists).map(([feature, h]) => {
    const bins = h.reference.length;
    const width = 120;
    const height = 44;
    const peak = Math.max(...h.reference, ...h.live, 1e-9);
    const bw = width / bins;
    const chart = svg("svg", {
      class: "chart hist",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": `${feature}: reference and live histograms`,
    });
    // A baseline shows the chart's extent when most bins are empty (a constant feature).
    chart.append(svg("line", { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, class: "base" }));
    for (let i = 0; i < bins; i++) {
      const ref = (h.reference[i] / peak) * (height - 2);
      const live = ((h.live[i] || 0) / peak) * (height - 2);
      chart.append(svg("rect", { x: i * bw + 1, y: height - ref, width: bw - 2, height: ref, class: "ref" }));
      chart.append(svg("rect", { x: i * bw + bw * 0.3, y: height - live, width: bw * 0.4, height: live, class: "live" }));
    }
    return el("figure", { class: "hist-box" }, chart, el("figcaption", {}, feature));
  });
  return el(
    "div",
    { class: "chart-box" },
    el("h4", {}, "Share per reference bin: ", el("span", { class: "key ref" }, "reference"), " ", el("span", { class: "key live" }, "live")),
    el("div", { class: "hists" }, boxes),
  );
}

function feedbackFacts(f) {
  return el(
    "div",
    { class: "chart-box" },
    el("h4", {}, "Inspectors' labels for the served version"),
    facts([
      ["labelled images", String(f.labelled_images)],
      ["precision", pct(f.precision)],
      ["recall", pct(f.recall)],
      ["false-alarm rate", pct(f.false_alarm_rate)],
      ["cost per parcel", fmt(f.cost_per_parcel)],
    ]),
  );
}

// ------------------------------------------------------------------ shadow (token)

async function refreshShadow() {
  if (!token) {
    show($("shadow-body"), needsToken("shadow results"));
    return;
  }
  const r = await api("/v1/shadow", { admin: true });
  if (!r.ok) {
    show($("shadow-body"), errorBox(r));
    return;
  }
  const s = r.body.shadow;
  if (!s) {
    show(
      $("shadow-body"),
      el("p", { class: "muted" }, "No shadow version. Start one with PUT /v1/shadow or python -m model_store shadow."),
    );
    return;
  }
  show(
    $("shadow-body"),
    facts([
      ["shadow", el("strong", {}, s.version)],
      ["against", s.against],
      ["share of traffic", pct(s.fraction)],
      ["images scored", String(s.images)],
      ["same decision", pct(s.agreement)],
      ["flips", `${s.flips.to_positive} to positive, ${s.flips.to_negative} to negative, ${s.flips.retake ?? 0} retake`],
      ["mean |Δ probability|", fmt(s.mean_abs_probability_diff, 4)],
      ["latency p50 / p95", `${s.latency_ms.p50 ?? "–"} / ${s.latency_ms.p95 ?? "–"} ms`],
      ["dropped / failed", `${s.dropped} / ${s.failed}`],
    ]),
  );
}

// ------------------------------------------------------------------ canary (token)

async function refreshCanary() {
  if (!token) {
    show($("canary-body"), needsToken("the canary"));
    return;
  }
  const r = await api("/v1/canary", { admin: true });
  if (!r.ok) {
    show($("canary-body"), errorBox(r));
    return;
  }
  const c = r.body.canary;
  if (!c) {
    const refused = r.body.store && r.body.refused;
    show(
      $("canary-body"),
      refused
        ? el("p", { class: "error" }, `Canary ${r.body.store.version} refused here (${r.body.refused}): its stations keep the active version.`)
        : el("p", { class: "muted" }, "No canary. Start one with PUT /v1/canary or python -m model_store canary start."),
    );
    return;
  }
  const which = c.stations.length ? c.stations.join(", ") : `${pct(c.fraction)} of stations (by station ID hash)`;
  const rows = r.body.comparisons.map((s) =>
    el(
      "tr",
      { dataset: { station: s.station } },
      el("td", {}, s.station),
      el("td", {}, String(s.images)),
      el("td", {}, pct(s.images ? s.agree / s.images : null)),
      el("td", {}, `${s.to_positive} / ${s.to_negative} / ${s.retake}`),
      el("td", {}, `${s.dropped} / ${s.failed}`),
    ),
  );
  const head = ["station", "images", "same decision", "flips to positive / negative / retake", "dropped / failed"];
  show(
    $("canary-body"),
    facts([
      ["canary", el("strong", { id: "canary-version" }, c.version)],
      ["active (every other station)", r.body.active ?? "–"],
      ["stations", which],
      ["since", `${c.since} (audit entry #${c.seq})`],
    ]),
    rows.length
      ? el(
          "table",
          { id: "canary-table" },
          el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
          el("tbody", {}, rows),
        )
      : el("p", { class: "muted" }, "No canary-station images compared with the active version yet."),
    policyCheck(r.body.policy_check),
  );
}

// What `canary check` would decide now, on every replica's evidence: the canary's estimated
// cost per parcel beside the active version's on the same stations' images.
function policyCheck(pc) {
  if (!pc || !pc.verdict) {
    return el("p", { class: "muted", id: "canary-verdict" }, `Promotion policy: ${pc ? pc.error : "–"}`);
  }
  const v = pc.verdict;
  const cost = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
  const rows = v.stations.map((s) =>
    el(
      "tr",
      { dataset: { station: s.station } },
      el("td", {}, s.station),
      el("td", {}, String(s.images)),
      el("td", {}, cost(s.canary_cost)),
      el("td", {}, `${cost(s.active_cost)} (${s.active_cost_source})`),
      el("td", {}, `${pct(s.agreement)} of ${s.compared}`),
      el("td", {}, s.alarms.length ? s.alarms.join(", ") : "none"),
    ),
  );
  const head = ["station", "images (fleet)", "canary cost / parcel", "active cost / parcel", "same decision", "alarms"];
  return el(
    "div",
    {},
    el(
      "p",
      { id: "canary-verdict", class: v.action === "end" ? "error" : "" },
      el("strong", {}, `Policy verdict: ${v.action}`),
      ` — ${v.reasons.join("; ")}`,
    ),
    rows.length
      ? el(
          "table",
          { id: "canary-evidence" },
          el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
          el("tbody", {}, rows),
        )
      : null,
  );
}

// ------------------------------------------------------------------ try an image (no token; sent when typed in)

async function tryImage(event) {
  event.preventDefault();
  const out = $("try-result");
  const file = $("try-file").files[0];
  if (!file) {
    show(out, el("p", { class: "error" }, "Choose an image file first."));
    return;
  }
  const form = new FormData();
  form.append("files", file, file.name);
  show(out, el("p", { class: "muted" }, `predicting ${file.name}…`));
  const r = await api("/v1/predict", { method: "POST", form, headers: { "X-Station-ID": "console" } });
  if (!r.ok) {
    show(out, errorBox(r));
    return;
  }
  const res = r.body.results[0];
  // A retake is no verdict: the photo is outside what the model was validated on.
  const tone = res.reason ? "warn" : res.probability >= res.threshold ? "bad" : "ok";
  const heat = el("div", { id: "try-explain" }, el("p", { class: "muted" }, "finding where the evidence lies…"));
  show(
    out,
    el("p", { class: "decision" }, el("span", { id: "try-decision", class: `badge big ${tone}` }, res.decision)),
    res.reason ? el("p", { id: "try-reason", class: "muted" }, res.reason) : null,
    facts([
      ["probability", el("span", { id: "try-probability" }, fmt(res.probability, 4))],
      ["threshold", fmt(res.threshold, 4)],
      ["model", `${r.body.model.name} ${r.body.model.version}`],
      ["request id", el("code", {}, r.body.request_id)],
      // With receipts on: the signed statement a claims desk verifies and replays (docs/receipts.md).
      res.receipt ? ["receipt", el("textarea", { id: "try-receipt", readonly: true, rows: 3, cols: 60 }, res.receipt)] : null,
    ].filter((row) => row !== null)),
    heat,
  );
  // Then where the evidence lies: POST /v1/explain on the same image (bounded apart from
  // predict, so a busy service may refuse it with 503 while predictions go on).
  const again = new FormData();
  again.append("files", file, file.name);
  const ex = await api("/v1/explain", { method: "POST", form: again, admin: true, headers: { "X-Station-ID": "console" } });
  if (!ex.ok) {
    show(heat, errorBox(ex));
    return;
  }
  const b = ex.body;
  show(
    heat,
    // The PNG comes from the service as base64 and is shown as an image only (CSP: img-src data:).
    el("img", { id: "try-overlay", src: `data:image/png;base64,${b.overlay_png}`, alt: `where the model saw damage in ${file.name}` }),
    el(
      "p",
      { class: "muted" },
      `Where the evidence for damage lies (${b.method}): red to yellow where covering the photo lowers the damage `,
      `score most, relative to this photo; darkened: cropped away, never seen by the model. `,
      `Probability ${fmt(b.probability, 4)} (${b.model.version}), as predicted.`,
    ),
  );
}

// ------------------------------------------------------------------ wiring

let refreshing = false;
let again = false;

async function refreshAll() {
  // One refresh at a time, so a slow service cannot pile them up; one asked for meanwhile
  // (after an activation, a new token) runs right after, so it sees the change.
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  try {
    await refreshServing();
    const [versions] = await Promise.all([refreshVersions(), refreshAudit(), refreshDrift(), refreshShadow(), refreshCanary()]);
    const state = $("auth-state");
    if (!token) state.textContent = "no token: read-only view";
    else if (versions && !versions.ok) state.textContent = `token refused (${versions.status} ${versions.body?.error ?? ""})`;
    else state.textContent = "token in use (this page only; reload or Forget to drop it)";
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } finally {
    refreshing = false;
  }
  if (again) {
    again = false;
    await refreshAll();
  }
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim() || null;
  $("token").value = ""; // out of the DOM: the variable is the only copy
  // A header value: letters, digits and . _ @ - only, so no input can break the request.
  actor = $("actor").value.replace(/[^A-Za-z0-9._@-]/g, "").slice(0, 40);
  refreshAll();
});
$("forget").addEventListener("click", () => {
  token = null;
  refreshAll();
});
$("change").addEventListener("submit", (event) => {
  event.preventDefault();
  change("activate");
});
$("rollback").addEventListener("click", () => change("rollback"));
$("run-parity").addEventListener("click", runParity);
$("refresh").addEventListener("click", refreshAll);
$("try-form").addEventListener("submit", tryImage);
setInterval(() => {
  if ($("auto-refresh").checked && document.visibilityState === "visible") refreshAll();
}, 10000);
refreshAll();
