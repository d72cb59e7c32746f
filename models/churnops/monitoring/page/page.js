// The monitoring page: polls /api/summary and draws it (tables and SVG, no library, nothing from the network).
// Every figure is an element with data-path set to its place in the API document, so what is shown can be
// checked against what the API says.
"use strict";

const REFRESH_MS = 2000;
let lastShown = null; // the last document drawn, without its time stamp: an unchanged summary is not redrawn

function fmt(v) {
  if (v === null || v === undefined) return "\u2013";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(4);
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function num(path, v) {
  return `<span class="num" data-path="${esc(path)}">${esc(fmt(v))}</span>`;
}

function scoreChart(score, base) {
  const w = 380, h = 150, left = 30, bottom = 28, n = score.labels.length;
  const peak = Math.max(0.01, ...score.window, ...(score.reference || []));
  const slot = (w - left) / n;
  let bars = "";
  score.labels.forEach((label, i) => {
    const x = left + i * slot;
    const hw = (score.window[i] / peak) * (h - bottom - 6);
    bars += `<rect class="window" x="${x + slot / 2}" y="${h - bottom - hw}" width="${slot / 2 - 1}" height="${hw}"><title>${esc(label)}: window ${fmt(score.window[i])}</title></rect>`;
    if (score.reference) {
      const hr = (score.reference[i] / peak) * (h - bottom - 6);
      bars += `<rect class="reference" x="${x + 1}" y="${h - bottom - hr}" width="${slot / 2 - 1}" height="${hr}"><title>${esc(label)}: reference ${fmt(score.reference[i])}</title></rect>`;
    }
    bars += `<text x="${x + slot / 2}" y="${h - bottom + 10}" text-anchor="middle" transform="rotate(35 ${x + slot / 2} ${h - bottom + 10})">${esc(label)}</text>`;
  });
  const axis = `<text x="2" y="10">${fmt(peak)}</text><line x1="${left}" y1="${h - bottom}" x2="${w}" y2="${h - bottom}" stroke="#999"/>`;
  const legend = `<div class="legend"><span class="swatch window"></span>window<span class="swatch reference"></span>reference (training)</div>`;
  const bands = ["high", "medium", "low"].map((b) => `${b} ${num(`${base}.bands.${b}`, score.bands[b])}`).join(", ");
  return `<svg class="score-chart" width="${w}" height="${h}" role="img" aria-label="score distribution">${axis}${bars}</svg>${legend}
    <p class="facts">mean score ${num(`${base}.mean`, score.mean)}; risk bands: ${bands}</p>`;
}

function driftPart(drift, base) {
  if (!drift) return "<p>No drift figures (see the notes).</p>";
  const cls = drift.verdict === true ? "drift" : drift.verdict === false ? "ok" : "none";
  const text = drift.verdict === true ? "Drift detected" : drift.verdict === false ? "No drift" : "No verdict";
  const top = drift.features.slice(0, 20);
  const w = 380, row = 14, left = 150, h = top.length * row + 16;
  const peak = Math.max(0.25, ...top.map((f) => f.psi || 0));
  const scale = (v) => ((v || 0) / peak) * (w - left - 50);
  let bars = "";
  top.forEach((f, i) => {
    const y = 4 + i * row;
    bars += `<text x="${left - 4}" y="${y + 10}" text-anchor="end">${esc(f.feature)}</text>`;
    bars += `<rect class="psi${f.drifted ? " drifted" : ""}" x="${left}" y="${y + 2}" width="${scale(f.psi)}" height="${row - 4}"><title>${esc(f.reason)}</title></rect>`;
    bars += `<text x="${left + scale(f.psi) + 3}" y="${y + 10}">${esc(fmt(f.psi))}</text>`;
  });
  const floor = `<line class="floor" x1="${left + scale(drift.psi_floor)}" y1="0" x2="${left + scale(drift.psi_floor)}" y2="${h}"><title>PSI floor ${drift.psi_floor}</title></line>`;
  const reasons = drift.reasons.map((r) => `<li>${esc(r)}</li>`).join("");
  const rows = top
    .map((f, i) => `<tr><td>${esc(f.feature)}</td><td class="n">${num(`${base}.features.${i}.psi`, f.psi)}</td>` +
      `<td class="n">${num(`${base}.features.${i}.q_value`, f.q_value)}</td><td>${f.drifted ? "yes" : "no"}</td></tr>`)
    .join("");
  return `<span class="verdict ${cls}">${text}</span>
    <p class="facts">${num(`${base}.drifted`, drift.drifted)} of ${num(`${base}.tested`, drift.tested)} features drifted
      (share ${num(`${base}.drifted_share`, drift.drifted_share)}); score PSI ${num(`${base}.score_psi`, drift.score_psi)}</p>
    <ul class="reasons">${reasons}</ul>
    <svg class="drift-chart" width="${w}" height="${h}" role="img" aria-label="PSI per feature">${bars}${floor}</svg>
    <table><thead><tr><th>feature (top ${top.length} of ${drift.features.length})</th><th class="n">PSI</th><th class="n">q (BH)</th><th>drifted</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function performancePart(perf, base) {
  if (!perf) return "<p>No performance figures (see the notes).</p>";
  const c = perf.coverage;
  const rows = perf.metrics
    .map((m, i) => `<tr><td>${esc(m.metric)}</td><td class="n">${num(`${base}.metrics.${i}.measured`, m.measured)}</td>` +
      `<td class="n">${num(`${base}.metrics.${i}.estimated`, m.estimated)}</td><td class="n">${num(`${base}.metrics.${i}.reference`, m.reference)}</td></tr>`)
    .join("");
  return `<p class="facts">${num(`${base}.coverage.labelled`, c.labelled)} of ${num(`${base}.coverage.predictions`, c.predictions)} predictions labelled
      (coverage ${num(`${base}.coverage.coverage`, c.coverage)}), ${num(`${base}.coverage.pending`, c.pending)} pending</p>
    <table><thead><tr><th>metric</th><th class="n">measured <span class="src">(labels)</span></th><th class="n">estimated <span class="src">(CBPE)</span></th>
      <th class="n">reference <span class="src">(holdout)</span></th></tr></thead><tbody>${rows}</tbody></table>`;
}

function businessPart(b, base) {
  if (!b) return "<p>No business figures (see the notes).</p>";
  const pair = (name, key) => `<tr><td>${name}</td><td class="n">${num(`${base}.${key}.measured`, b[key].measured)}</td>` +
    `<td class="n">${num(`${base}.${key}.estimated`, b[key].estimated)}</td></tr>`;
  const risk = b.revenue_at_risk_by_band.map((r, i) => `${esc(r.band)} ${num(`${base}.revenue_at_risk_by_band.${i}.estimated`, r.estimated)}`).join(", ");
  const sat = b.satisfaction
    .map((s, i) => `<tr><td>${esc(s.band)}</td><td class="n">${num(`${base}.satisfaction.${i}.csat`, s.csat)}</td><td class="n">${num(`${base}.satisfaction.${i}.nps`, s.nps)}</td></tr>`)
    .join("");
  return `<table><thead><tr><th></th><th class="n">measured</th><th class="n">estimated</th></tr></thead><tbody>
      ${pair("churn rate", "churn_rate")}${pair("campaign net savings", "net_savings")}${pair("campaign ROI", "roi")}
      <tr><td>revenue at risk / month</td><td class="n">\u2013</td><td class="n">${num(`${base}.revenue_at_risk.estimated`, b.revenue_at_risk.estimated)}</td></tr>
    </tbody></table>
    <p class="facts">revenue at risk by band <span class="src">(estimated)</span>: ${risk}</p>
    <table><thead><tr><th>risk band</th><th class="n">CSAT <span class="src">(measured)</span></th><th class="n">NPS <span class="src">(measured)</span></th></tr></thead><tbody>${sat}</tbody></table>`;
}

function fairnessPart(f, base) {
  if (!f) return "<p>No fairness figures (see the notes).</p>";
  const breached = f.breached.length ? `<p class="breached">gate breached: ${esc(f.breached.join(", "))} above ${esc(f.max_gap)}</p>` : "";
  const rows = f.segments
    .map((s, i) => `<tr><td>${esc(s.segment)}</td><td class="n">${num(`${base}.segments.${i}.rows`, s.rows)}</td>` +
      `<td class="n">${num(`${base}.segments.${i}.positive_rate`, s.positive_rate)}</td><td class="n">${num(`${base}.segments.${i}.recall`, s.recall)}</td></tr>`)
    .join("");
  return `<p class="facts">positive-rate gap ${num(`${base}.positive_rate_gap`, f.positive_rate_gap)} (all predictions),
      recall gap ${num(`${base}.recall_gap`, f.recall_gap)} (labelled); gate ${num(`${base}.max_gap`, f.max_gap)}</p>${breached}
    <table><thead><tr><th>segment</th><th class="n">predictions</th><th class="n">positive rate</th><th class="n">recall</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function versionPart(v, i) {
  const base = `versions.${i}`;
  const aliases = v.aliases.map((a) => `<span class="alias">${esc(a)}</span>`).join("");
  const notes = v.notes.length ? `<ul class="notes">${v.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : "";
  return `<section class="version" data-version="${esc(v.version)}">
    <h2>v${esc(v.version)}${aliases}</h2>
    <p class="facts">${num(`${base}.rows`, v.rows)} predictions from ${esc(v.first)} to ${esc(v.last)}; threshold ${num(`${base}.threshold`, v.threshold)}</p>
    ${notes}
    <div class="grid">
      <div class="card"><h3>Score distribution</h3>${scoreChart(v.score, `${base}.score`)}</div>
      <div class="card"><h3>Drift per feature</h3>${driftPart(v.drift, `${base}.drift`)}</div>
      <div class="card"><h3>Performance: measured vs estimated</h3>${performancePart(v.performance, `${base}.performance`)}</div>
      <div class="card"><h3>Business</h3>${businessPart(v.business, `${base}.business`)}</div>
      <div class="card"><h3>Fairness across segments</h3>${fairnessPart(v.fairness, `${base}.fairness`)}</div>
    </div></section>`;
}

function render(doc) {
  document.getElementById("model").textContent = doc.model;
  const w = doc.window;
  document.getElementById("window").innerHTML =
    `latest ${num("window.rows", w.rows)} predictions (at most ${num("window.max_rows", w.max_rows)}) from ${esc(w.start)} to ${esc(w.end)}; ` +
    `labels: ${num("labels.rows", doc.labels.rows)} rows in ${num("labels.files", doc.labels.files)} file(s)`;
  document.getElementById("versions").innerHTML = doc.versions.length
    ? doc.versions.map(versionPart).join("")
    : "<p>No prediction in the log yet: serve or score some customers.</p>";
  document.body.dataset.generatedAt = doc.generated_at;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/api/summary", { cache: "no-store" });
    const text = await response.text();
    if (!response.ok) throw new Error(`${response.status}: ${text}`);
    const doc = JSON.parse(text);
    const content = JSON.stringify({ ...doc, generated_at: null });
    if (content !== lastShown) {
      render(doc);
      lastShown = content;
    }
    status.textContent = `updated ${new Date().toLocaleTimeString()} (summary of ${doc.generated_at})`;
    status.className = "status";
    document.body.dataset.ready = "1";
  } catch (err) {
    status.textContent = `cannot refresh: ${err.message}`;
    status.className = "status error";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
