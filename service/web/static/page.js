// The sharpmix page: the tenant's sweeps, and one page per sweep with its evidence.
// It talks to the same /v1 API as any client: the key is entered once, kept in this tab's
// sessionStorage and sent as the Authorization header; it is never put in a URL.
"use strict";

const KEY = "sharpmix.apiKey";
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const REFRESH_MS = 3000;
// Robust log-axis limits, as the server's plot (service/plot.py) draws them.
const FENCE_IQR = 1.5;
const MIN_SPAN_DECADES = 1.0;
const PAD_DECADES = 0.15;
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
const PLOT_CONFIG = { displayModeBar: false, responsive: true };

const $ = (id) => document.getElementById(id);
let refreshTimer = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(message, isError = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

function num(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const size = Math.abs(value);
  if (size !== 0 && (size < 1e-2 || size >= 1e5)) return value.toExponential(2);
  return Number(value.toPrecision(3)).toString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

async function api(path, method = "GET") {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
    cache: "no-store",
  });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function json(path) {
  return (await api(path)).json();
}

// ---------------------------------------------------------------- key handling

function showKeyState() {
  const held = sessionStorage.getItem(KEY) !== null;
  $("key-form").hidden = held;
  $("key-held").hidden = !held;
  return held;
}

function setUpKey() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    $("api-key").value = "";
    route();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    clearTimeout(refreshTimer);
    $("list-view").hidden = true;
    $("sweep-view").hidden = true;
    showKeyState();
    say("The key is forgotten; enter one to see your sweeps.");
  });
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    sessionStorage.removeItem(KEY);
    showKeyState();
    say(`The server refused the key (${error.message}). Enter a key of this server's database.`,
      true);
  } else if (error instanceof ApiError) {
    say(`The server answered ${error.status}: ${error.message}`, true);
  } else {
    say(`Cannot reach the server: ${error.message}. Is it running?`, true);
  }
}

// ---------------------------------------------------------------- the list of sweeps

async function answerOf(sweep) {
  if (sweep.state !== "succeeded") return "–";
  const rec = await json(`/v1/sweeps/${encodeURIComponent(sweep.id)}/recommendation`);
  return rec.ratio === null ? "none qualifies" : num(rec.ratio);
}

function progressCell(progress) {
  const { tasks_done: done, tasks_total: total } = progress;
  return el("td", {},
    el("progress", { max: String(total), value: String(done), "aria-label": `${done} of ${total} ratios` }),
    ` ${done}/${total}`);
}

async function showList(cursor = null, append = false) {
  const page = await json(`/v1/sweeps?limit=20${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
  const answers = await Promise.all(page.items.map(answerOf));
  const body = $("sweeps").querySelector("tbody");
  if (!append) body.replaceChildren();
  page.items.forEach((sweep, i) => {
    body.append(el("tr", {},
      el("td", {}, el("a", { href: `/sweeps/${encodeURIComponent(sweep.id)}` }, sweep.id)),
      el("td", {}, sweep.created_at.replace("T", " ").slice(0, 19)),
      el("td", {}, el("span", { class: `state ${sweep.state}` }, sweep.state)),
      progressCell(sweep.progress),
      el("td", { class: "answer" }, answers[i]),
      el("td", {}, FINAL.has(sweep.state) ? "–" : duration(sweep.progress.eta_seconds))));
  });
  if (!body.children.length) {
    body.append(el("tr", {}, el("td", { colspan: "6" },
      "No sweep yet: submit one with `sharpmix submit sweep.yaml`.")));
  }
  const more = $("more");
  more.hidden = page.next_cursor === null;
  more.onclick = () => showList(page.next_cursor, true).catch(failed);
  $("list-view").hidden = false;
  say(`${body.children.length} sweep(s) shown.`);
  const running = page.items.some((s) => !FINAL.has(s.state));
  if (running && !append) refreshTimer = setTimeout(() => showList().catch(failed), REFRESH_MS);
}

// ---------------------------------------------------------------- one sweep

function facts(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === undefined) continue;
    list.append(el("dt", {}, term), el("dd", {}, value));
  }
}

function renderRecommendation(sweep, rec) {
  const box = $("recommendation");
  box.replaceChildren();
  if (sweep.state === "failed" || sweep.state === "cancelled") {
    box.append(el("p", { class: "error" }, `No answer: the sweep ${sweep.state}. ${sweep.error || ""}`));
    return;
  }
  if (rec === null) {
    box.append(el("p", {}, "Not yet: the recommendation comes once the sweep has succeeded."));
    return;
  }
  box.append(
    el("p", { class: "answer-line" }, "Recommended pre-training ratio: ",
      el("strong", { id: "answer" }, rec.ratio === null ? "none qualifies" : num(rec.ratio)),
      ` (objective ${rec.objective}, confidence ${rec.confidence})`),
    el("p", { id: "reason" }, rec.reason));
  if (rec.weights && rec.ratio !== null) {
    box.append(el("p", { id: "answer-mix" }, "Recommended mix: ", el("strong", {}, mixLabel(rec.weights))));
  }
  const pairs = [
    ["Planned learning rate", num(rec.learning_rate)],
    ["Largest stable learning rate for this mix", num(rec.max_stable_lr)],
    ["Flat pre-training rule", num(rec.flat_ratio)],
    ["Balanced rule", num(rec.balanced_ratio)],
    ["Loss-change rule", num(rec.least_forgetting_ratio)],
    ["Pareto front", rec.pareto_ratios.length ? rec.pareto_ratios.map(num).join(", ") : "–"],
  ];
  // Present once trajectory sweeps exist on the server; absent fields are left out.
  if (rec.basis !== undefined) pairs.push(["Basis", rec.basis]);
  if (rec.tolerance !== undefined) pairs.push(["Tolerance (nats)", num(rec.tolerance)]);
  if (rec.planned_steps !== undefined) pairs.push(["Planned steps", String(rec.planned_steps)]);
  if (rec.forecast_drift !== undefined) pairs.push(["Forecast pre-training drift", num(rec.forecast_drift)]);
  if (rec.finetuning_gain !== undefined) pairs.push(["Fine-tuning gain", num(rec.finetuning_gain)]);
  const list = el("dl", { class: "facts" });
  facts(list, pairs);
  box.append(list);
  if (rec.warnings.length) {
    box.append(el("h3", {}, "Warnings"), el("ul", {}, ...rec.warnings.map((w) => el("li", {}, w))));
  }
}

function quantile(sorted, q) {
  const position = q * (sorted.length - 1);
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (sorted[above] - sorted[below]) * (position - below);
}

function axisLimits(values, line) {
  const logs = values.filter((v) => v > 0 && Number.isFinite(v)).map(Math.log10).sort((a, b) => a - b);
  const kept = [Math.log10(line)];
  if (logs.length) {
    const q1 = quantile(logs, 0.25);
    const q3 = quantile(logs, 0.75);
    const fence = Math.max(FENCE_IQR * (q3 - q1), 0.5);
    kept.push(...logs.filter((v) => v >= q1 - fence && v <= q3 + fence));
  }
  let bottom = Math.min(...kept);
  let top = Math.max(...kept);
  if (top - bottom < MIN_SPAN_DECADES) {
    const middle = (top + bottom) / 2;
    bottom = middle - MIN_SPAN_DECADES / 2;
    top = middle + MIN_SPAN_DECADES / 2;
  }
  return [bottom - PAD_DECADES, top + PAD_DECADES]; // in decades, as plotly's log axis wants
}

function sharpnessOf(eta) {
  return eta !== null && eta > 0 ? 2 / eta : null;
}

function setsInOrder(trials) {
  const seen = [];
  for (const t of trials) if (!seen.some((s) => s.name === t.eval_set)) seen.push({ name: t.eval_set, role: t.role });
  const rank = { pretraining: 0, finetuning: 1, retention: 2, target: 3 };
  return seen.sort((a, b) => (rank[a.role] ?? 9) - (rank[b.role] ?? 9));
}

function isMixSweep(spec) {
  return Boolean(spec.mixes || spec.mix_search);
}

function mixLabel(weights) {
  return weights ? Object.entries(weights).map(([name, share]) => `${name} ${num(share)}`).join(", ") : "–";
}

// k-domain mixes: one line per mix across parallel axes (its share of every set, then
// log10(eta_c / lr) of its most fragile guarded set), as the server's plot draws them.
function renderMixes(sweep, trials, rec) {
  const lr = sweep.spec.learning_rate;
  $("sharpness-heading").textContent = "Critical sharpness by mix";
  $("sharpness-note").textContent = "One line per mix: its share of every pre-training source and " +
    "fine-tuning set, then log10(eta_c / learning rate) of its most fragile pre-training or " +
    "retention set (above the dash the first step stays in the basin).";
  $("chart-sharpness").setAttribute("aria-label", "Each mix's shares and first-step margin on parallel axes");
  const names = [];
  const mixes = new Map();
  for (const t of trials) {
    if (!t.weights || t.status === "pruned") continue;
    for (const name of Object.keys(t.weights)) if (!names.includes(name)) names.push(name);
    const key = JSON.stringify(t.weights);
    if (!mixes.has(key)) mixes.set(key, { weights: t.weights, lows: [] });
    if (t.role === "pretraining" || t.role === "retention") {
      mixes.get(key).lows.push(t.status === "increases_immediately" ? 0 : (t.eta_c_low ?? t.eta_c ?? 0));
    }
  }
  const rows = [...mixes.values()].map((m) => {
    const low = m.lows.length ? Math.min(...m.lows) : 0;
    return { weights: m.weights, margin: Math.log10(Math.max(low, 1e-30) / lr) };
  });
  const chosen = rec !== null && rec.weights ? JSON.stringify(rec.weights) : null;
  const span = Math.max(1, ...rows.map((r) => Math.abs(r.margin)).filter((v) => v < 20));
  // Plain SVG lines (plotly's parcoords needs WebGL, which not every browser has): x is the
  // axis index, the margin axis maps [-span, span] decades onto [0, 1] like a share.
  const axes = [...names, "log10(eta_c / lr)"];
  const kinds = [
    ["out of the basin", "#d62728", 1.5, (r, best) => !best && r.margin <= 0],
    ["first step in the basin", "#2ca02c", 1.5, (r, best) => !best && r.margin > 0],
    ["recommended mix", "#000000", 4, (r, best) => best],
  ];
  const traces = kinds.map(([label, color, width, keep]) => {
    const xs = [];
    const ys = [];
    const text = [];
    for (const r of rows) {
      if (!keep(r, chosen === JSON.stringify(r.weights))) continue;
      const scaled = Math.max(0, Math.min(1, 0.5 + r.margin / (2 * span)));
      xs.push(...axes.map((_, i) => i), null);
      ys.push(...names.map((name) => r.weights[name] ?? 0), scaled, null);
      text.push(...names.map((name) => num(r.weights[name] ?? 0)), num(r.margin), null);
    }
    return {
      type: "scatter", mode: "lines+markers", name: label, x: xs, y: ys, text,
      line: { color, width }, marker: { color, size: 6 }, connectgaps: false,
      hovertemplate: "%{text}<extra>%{fullData.name}</extra>",
    };
  }).filter((t) => t.x.length);
  Plotly.react($("chart-sharpness"), traces, {
    margin: { t: 30, r: 20, b: 50, l: 70 }, font: { color: "#222" },
    xaxis: { tickvals: axes.map((_, i) => i), ticktext: axes, range: [-0.2, axes.length - 0.8], zeroline: false },
    yaxis: { title: { text: "share of the mix" }, range: [-0.03, 1.03] },
    shapes: [{ type: "line", x0: names.length - 0.15, x1: names.length + 0.15, y0: 0.5, y1: 0.5, line: { color: "#000", dash: "dash", width: 1.5 } }],
    annotations: [{ x: names.length, y: 0, yanchor: "top", text: `±${num(span)} decades; eta_c = lr at the dash`, showarrow: false, font: { size: 11 } }],
    legend: { orientation: "h", y: -0.22 },
  }, PLOT_CONFIG);
}

// The section's words for ratio sweeps, kept to put back after a mix sweep was shown.
const SHARPNESS_WORDS = {};

function renderSharpness(sweep, trials, rec) {
  for (const id of ["sharpness-heading", "sharpness-note"]) SHARPNESS_WORDS[id] ??= $(id).textContent;
  SHARPNESS_WORDS.label ??= $("chart-sharpness").getAttribute("aria-label");
  if (isMixSweep(sweep.spec)) {
    renderMixes(sweep, trials, rec);
    return;
  }
  for (const id of ["sharpness-heading", "sharpness-note"]) $(id).textContent = SHARPNESS_WORDS[id];
  $("chart-sharpness").setAttribute("aria-label", SHARPNESS_WORDS.label);
  const line = 2 / sweep.spec.learning_rate;
  const sets = setsInOrder(trials).map(({ name, role }) => ({
    name,
    role,
    points: trials
      .filter((t) => t.eval_set === name && sharpnessOf(t.eta_c) !== null)
      .sort((a, b) => a.ratio - b.ratio)
      .map((t) => {
        const lam = sharpnessOf(t.eta_c);
        const low = sharpnessOf(t.eta_c_high);
        const high = sharpnessOf(t.eta_c_low);
        return { ratio: t.ratio, lam, low: low === null ? null : Math.min(low, lam), high: high === null ? null : Math.max(high, lam) };
      }),
  }));
  const values = sets.flatMap((s) => s.points.flatMap((p) => [p.lam, p.low, p.high])).filter((v) => v !== null);
  const [bottomLog, topLog] = axisLimits(values, line);
  const bottom = 10 ** bottomLog;
  const top = 10 ** topLog;
  const traces = [];
  sets.forEach((set, index) => {
    const color = PALETTE[index % PALETTE.length];
    const inside = set.points.filter((p) => p.lam >= bottom && p.lam <= top);
    const outside = set.points.filter((p) => p.lam < bottom || p.lam > top);
    traces.push({
      type: "scatter", mode: "lines+markers", name: `${set.name} (${set.role})`,
      x: inside.map((p) => p.ratio), y: inside.map((p) => p.lam),
      line: { color, width: 2 },
      marker: { color, size: 9, symbol: inside.map((p) => (p.low === null || p.high === null ? "circle-open" : "circle")), line: { width: 2, color } },
      error_y: {
        type: "data", symmetric: false, color, thickness: 1.5, width: 4,
        array: inside.map((p) => Math.min(p.high ?? top, top) - p.lam),
        arrayminus: inside.map((p) => p.lam - Math.max(p.low ?? bottom, bottom)),
      },
      hovertemplate: "ratio %{x}<br>lambda_c %{y:.3g}<extra>%{fullData.name}</extra>",
    });
    const openTop = inside.filter((p) => p.high === null);
    const openBottom = inside.filter((p) => p.low === null);
    const arrows = [...openTop.map((p) => [p.ratio, top, "triangle-up"]), ...openBottom.map((p) => [p.ratio, bottom, "triangle-down"])];
    if (arrows.length) {
      traces.push({
        type: "scatter", mode: "markers", showlegend: false, hoverinfo: "skip", cliponaxis: false,
        x: arrows.map((a) => a[0]), y: arrows.map((a) => a[1]),
        marker: { color, size: 10, symbol: arrows.map((a) => a[2]) },
      });
    }
    if (outside.length) {
      traces.push({
        type: "scatter", mode: "markers+text", showlegend: false, cliponaxis: false,
        x: outside.map((p) => p.ratio), y: outside.map((p) => (p.lam > top ? top : bottom)),
        text: outside.map((p) => num(p.lam)), textposition: "middle right",
        textfont: { color, size: 11 },
        marker: { color, size: 12, symbol: outside.map((p) => (p.lam > top ? "triangle-up" : "triangle-down")) },
        hovertemplate: "ratio %{x}<br>lambda_c %{text} (off the axis)<extra></extra>",
      });
    }
  });
  const shapes = [
    { type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: bottom, y1: line, fillcolor: "#2ca02c", opacity: 0.08, line: { width: 0 }, layer: "below" },
    { type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: line, y1: line, line: { color: "#000", dash: "dash", width: 1.5 } },
  ];
  const annotations = [
    { xref: "paper", x: 1, xanchor: "right", yref: "y", y: Math.log10(line), yanchor: "top", text: "stable below: eta_c above the planned rate", showarrow: false, font: { color: "#1b5e20", size: 12 } },
    { xref: "paper", x: 1, xanchor: "right", yref: "y", y: Math.log10(line), yanchor: "bottom", text: `unstable above 2 / learning rate = ${num(line)}`, showarrow: false, font: { color: "#8b0000", size: 12 } },
  ];
  if (rec !== null && rec.ratio !== null) {
    shapes.push({ type: "line", x0: rec.ratio, x1: rec.ratio, yref: "paper", y0: 0, y1: 1, line: { color: "#b71c1c", dash: "dot", width: 2 } });
    annotations.push({ x: rec.ratio, yref: "paper", y: 1, yanchor: "bottom", text: `recommended ${num(rec.ratio)}`, showarrow: false, font: { color: "#b71c1c", size: 12 } });
  }
  Plotly.react($("chart-sharpness"), traces, {
    margin: { t: 30, r: 20, b: 50, l: 70 },
    xaxis: { title: { text: "pre-training ratio (fraction of pre-training tokens)" }, range: [-0.03, 1.03], zeroline: false },
    yaxis: { title: { text: "critical sharpness 2 / eta_c" }, type: "log", range: [bottomLog, topLog] },
    legend: { orientation: "h", y: -0.22 },
    shapes, annotations, font: { color: "#222" },
  }, PLOT_CONFIG);
}

function renderTrajectories(traj) {
  const note = $("trajectory-note");
  const drift = $("chart-drift");
  const sharp = $("chart-trajectory-sharpness");
  const ratios = traj === null ? [] : traj.ratios.filter((r) => r.points.length || r.forecast.length);
  if (!ratios.length) {
    drift.hidden = true;
    sharp.hidden = true;
    // traj.steps is null when the spec asks for no trajectory block at all.
    note.replaceChildren(el("p", {}, traj === null || traj.steps === null
      ? "This sweep has no trajectories: it measured the first step only (a first-step verdict)."
      : "No trajectory point yet: they appear as the workers step on each mix."));
    return;
  }
  note.replaceChildren(el("p", { class: "note" },
    `Each ratio's pre-training loss drift over real optimizer steps (planned run: ${traj.planned_steps} steps), ` +
    `with the tolerance band (a rise up to ${num(traj.tolerance)} nats) and the forecast at the planned length.`));
  drift.hidden = false;
  sharp.hidden = false;
  const pre = (p) => p.role === "pretraining";
  const driftTraces = [];
  const sharpTraces = [];
  const lrByStep = new Map();
  ratios.forEach((r, index) => {
    const color = PALETTE[index % PALETTE.length];
    const name = `${r.weights ? mixLabel(r.weights) : `ratio ${num(r.ratio)}`} (${r.state})`;
    const points = r.points.filter(pre).sort((a, b) => a.step - b.step);
    points.forEach((p) => lrByStep.set(p.step, p.lr));
    driftTraces.push({ type: "scatter", mode: "lines+markers", name, legendgroup: name, x: points.map((p) => p.step), y: points.map((p) => p.drift), line: { color }, marker: { color, size: 6 } });
    const forecast = r.forecast.filter(pre);
    if (forecast.length) {
      driftTraces.push({
        type: "scatter", mode: "markers", name: `${name} forecast`, legendgroup: name, showlegend: false,
        x: forecast.map((f) => f.steps), y: forecast.map((f) => f.drift),
        marker: { color, size: 10, symbol: "diamond-open", line: { width: 2, color } },
        error_y: { type: "data", symmetric: false, color, array: forecast.map((f) => f.high - f.drift), arrayminus: forecast.map((f) => f.drift - f.low) },
        hovertemplate: "forecast at %{x} steps: %{y:.3g}<extra>%{fullData.name}</extra>",
      });
    }
    const withEta = points.filter((p) => sharpnessOf(p.eta_c) !== null);
    sharpTraces.push({ type: "scatter", mode: "lines+markers", name, x: withEta.map((p) => p.step), y: withEta.map((p) => sharpnessOf(p.eta_c)), line: { color }, marker: { color, size: 6 } });
  });
  const tol = traj.tolerance;
  Plotly.react(drift, driftTraces, {
    margin: { t: 30, r: 20, b: 50, l: 70 },
    xaxis: { title: { text: "optimizer step" } },
    yaxis: { title: { text: "pre-training loss drift (nats)" } },
    shapes: [
      { type: "rect", xref: "paper", x0: 0, x1: 1, yref: "y", y0: -tol, y1: tol, fillcolor: "#2ca02c", opacity: 0.1, line: { width: 0 }, layer: "below" },
      { type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: tol, y1: tol, line: { color: "#8b0000", dash: "dash", width: 1.5 } },
    ],
    annotations: [{ xref: "paper", x: 0, xanchor: "left", yref: "y", y: tol, yanchor: "bottom", text: `tolerance +${num(tol)} nats`, showarrow: false, font: { color: "#8b0000", size: 12 } }],
    legend: { orientation: "h", y: -0.22 }, font: { color: "#222" },
  }, PLOT_CONFIG);
  const steps = [...lrByStep.keys()].sort((a, b) => a - b);
  sharpTraces.push({ type: "scatter", mode: "lines", name: "2 / learning rate", x: steps, y: steps.map((s) => 2 / lrByStep.get(s)), line: { color: "#000", dash: "dash", width: 1.5 } });
  Plotly.react(sharp, sharpTraces, {
    margin: { t: 30, r: 20, b: 50, l: 70 },
    xaxis: { title: { text: "optimizer step" } },
    yaxis: { title: { text: "pre-training critical sharpness 2 / eta_c" }, type: "log" },
    legend: { orientation: "h", y: -0.22 }, font: { color: "#222" },
  }, PLOT_CONFIG);
}

function renderTrials(trials) {
  const body = $("trials").querySelector("tbody");
  body.replaceChildren(...trials.map((t) => el("tr", {},
    el("td", {}, t.weights && Object.keys(t.weights).length > 2 ? `${num(t.ratio)} (${mixLabel(t.weights)})` : num(t.ratio)),
    el("td", {}, t.eval_set), el("td", {}, t.role), el("td", {}, t.status),
    el("td", {}, num(t.eta_c)), el("td", {}, `[${num(t.eta_c_low)}, ${num(t.eta_c_high)}]`),
    el("td", {}, num(t.sharpness)), el("td", {}, num(t.loss)), el("td", {}, num(t.loss_change)),
    el("td", {}, String(t.forwards)))));
  if (!trials.length) body.append(el("tr", {}, el("td", { colspan: "10" }, "Nothing measured yet.")));
}

function renderCost(sweep) {
  const p = sweep.progress;
  const wall = sweep.started_at && sweep.finished_at
    ? (Date.parse(sweep.finished_at) - Date.parse(sweep.started_at)) / 1000 : null;
  facts($("cost"), [
    ["Ratios measured", `${p.tasks_done} of ${p.tasks_total}`],
    ["Forward passes", String(p.forwards)],
    ["Backward passes", String(p.backwards)],
    ["Optimizer steps", sweep.optimizer_steps === undefined ? undefined : String(sweep.optimizer_steps)],
    ["Worker compute", duration(p.compute_seconds)],
    ["Wall time, start to finish", wall === null ? "–" : duration(wall)],
  ]);
}

function renderEndpoints(id) {
  const base = `/v1/sweeps/${encodeURIComponent(id)}`;
  const endpoints = [
    ["Sweep: spec, state, progress", base],
    ["Trials", `${base}/trials`],
    ["Recommendation", `${base}/recommendation`],
    ["Trajectories", `${base}/trajectories`],
    ["Plot (PNG, drawn by the server)", `${base}/plot.png`],
    ["Export: token and example shares (JSON)", `${base}/export?format=json`],
    ["Export: datasets.interleave_datasets", `${base}/export?format=hf`],
    ["Export: LLaMA-Factory", `${base}/export?format=llamafactory`],
    ["Export: axolotl", `${base}/export?format=axolotl`],
    ["Export: torchtune", `${base}/export?format=torchtune`],
    ["Export: OLMo-core", `${base}/export?format=olmo-core`],
    ["Export: Megatron", `${base}/export?format=megatron`],
  ];
  $("endpoints").replaceChildren(...endpoints.map(([label, path]) => {
    const link = el("a", { href: path }, label);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      showRaw(path).catch((error) => {
        $("raw").hidden = false;
        $("plot-png").hidden = true;
        $("raw").textContent = `${path}: ${error.status ?? ""} ${error.message}`;
      });
    });
    return el("li", {}, link, " ", el("code", {}, path));
  }));
}

async function showRaw(path) {
  const response = await api(path);
  const raw = $("raw");
  const img = $("plot-png");
  if ((response.headers.get("content-type") || "").startsWith("image/")) {
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await response.blob());
    img.hidden = false;
    raw.hidden = true;
  } else if ((response.headers.get("content-type") || "").startsWith("application/json")) {
    raw.textContent = JSON.stringify(await response.json(), null, 2);
    raw.hidden = false;
    img.hidden = true;
  } else {
    raw.textContent = await response.text();
    raw.hidden = false;
    img.hidden = true;
  }
}

async function optional(path) {
  try {
    return await json(path);
  } catch (error) {
    // 404: this server has no such endpoint (or the sweep no such data); 409: not yet.
    if (error instanceof ApiError && (error.status === 404 || error.status === 409)) return null;
    throw error;
  }
}

async function showSweep(id, first = true) {
  const base = `/v1/sweeps/${encodeURIComponent(id)}`;
  const sweep = await json(base);
  const [trials, rec, traj] = await Promise.all([
    json(`${base}/trials`),
    sweep.state === "succeeded" ? json(`${base}/recommendation`) : Promise.resolve(null),
    optional(`${base}/trajectories`),
  ]);
  document.title = `sharpmix sweep ${id}`;
  $("sweep-heading").textContent = `Sweep ${id}`;
  const p = sweep.progress;
  facts($("sweep-facts"), [
    ["State", el("span", { class: `state ${sweep.state}` }, sweep.state)],
    ["Progress", `${p.tasks_done} of ${p.tasks_total} ratios`],
    ["Time left", FINAL.has(sweep.state) ? "–" : duration(p.eta_seconds)],
    ["Model", sweep.spec.model.path ?? sweep.spec.model.hub_id],
    ["Planned learning rate", num(sweep.spec.learning_rate)],
    ["Objective", sweep.spec.objective],
    ["Created (UTC)", sweep.created_at.replace("T", " ").slice(0, 19)],
    ["Optuna study", sweep.study_name],
  ]);
  $("sweep-view").hidden = false; // before drawing: plotly sizes a chart from its shown box
  renderRecommendation(sweep, rec);
  renderSharpness(sweep, trials, rec);
  renderTrajectories(traj);
  renderTrials(trials);
  renderCost(sweep);
  if (first) renderEndpoints(id);
  say(FINAL.has(sweep.state) ? `Sweep ${sweep.state}.` : `Sweep ${sweep.state}; this page refreshes itself.`);
  if (!FINAL.has(sweep.state)) refreshTimer = setTimeout(() => showSweep(id, false).catch(failed), REFRESH_MS);
}

// ---------------------------------------------------------------- routing

function route() {
  clearTimeout(refreshTimer);
  if (!showKeyState()) {
    say("Enter your API key to see your team's sweeps.");
    return;
  }
  const match = window.location.pathname.match(/^\/sweeps\/([^/]+)$/);
  const shown = match ? showSweep(decodeURIComponent(match[1])) : showList();
  shown.catch(failed);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpKey();
  route();
});
