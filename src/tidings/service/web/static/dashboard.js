// The dashboard: polls /api/stats every two seconds and draws the figures as SVG.
// No library: a line chart is a few <path> elements over a grid.
'use strict';

const POLL_MS = 2000;
const WINDOW_S = 600;
const SVG_NS = 'http://www.w3.org/2000/svg';
const W = 320, H = 120, LEFT = 34, RIGHT = 6, TOP = 8, BOTTOM = 18;

const token = new URLSearchParams(location.search).get('token');
const headers = token ? {Authorization: 'Bearer ' + token} : {};

const $ = id => document.getElementById(id);

function setText(id, value) {
  const el = $(id);
  if (el && el.textContent !== value) el.textContent = value;
}

function formatCount(n) {
  if (n === null || n === undefined) return '–';
  return Number(n).toLocaleString('en');
}

function formatSeconds(s) {
  if (s === null || s === undefined) return '–';
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + ' ms';
  if (s < 120) return s.toFixed(1) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

function formatUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return d + 'd ' + h + 'h';
  if (h) return h + 'h ' + m + 'm';
  return m + 'm ' + Math.floor(s % 60) + 's';
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function shortNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + 'k';
  return String(Math.round(v * 100) / 100);
}

// series: [{values: [number|null], cls: 'p50'}]; t: timestamps (s); now: the newest second.
// The time axis spans the history there is, from one to ten minutes.
function drawChart(svg, t, series, now, describe) {
  const span = Math.min(WINDOW_S, Math.max(60, t.length ? now - t[0] : 0));
  const plotW = W - LEFT - RIGHT, plotH = H - TOP - BOTTOM;
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  max = niceMax(max);
  const x = ts => LEFT + ((ts - (now - span)) / span) * plotW;
  const y = v => TOP + plotH - (v / max) * plotH;
  const parts = [];
  for (const frac of [0, 0.5, 1]) {
    const yy = y(max * frac);
    parts.push(el('line', {class: 'grid', x1: LEFT, x2: W - RIGHT, y1: yy, y2: yy}));
    parts.push(el('text', {class: 'axis', x: LEFT - 4, y: yy + 4, 'text-anchor': 'end'},
      shortNumber(max * frac)));
  }
  parts.push(el('text', {class: 'axis', x: LEFT, y: H - 3}, '−' + Math.round(span / 60) + ' min'));
  parts.push(el('text', {class: 'axis', x: W - RIGHT, y: H - 3, 'text-anchor': 'end'}, 'now'));
  for (const s of series) {
    let d = '';
    let pen = false;
    for (let i = 0; i < t.length; i++) {
      const v = s.values[i];
      if (v === null || v === undefined || t[i] < now - span) { pen = false; continue; }
      d += (pen ? 'L' : 'M') + x(t[i]).toFixed(1) + ' ' + y(v).toFixed(1);
      const next = i + 1 < t.length ? s.values[i + 1] : null;
      if (!pen && (next === null || next === undefined)) d += 'h0.01';  // a lone point: a dot
      pen = true;
    }
    if (d) parts.push(el('path', {class: 'line ' + s.cls, d}));
  }
  svg.replaceChildren(...parts);
  svg.setAttribute('aria-label', describe);
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

function sum(values, from) {
  let total = 0;
  for (let i = Math.max(0, from); i < values.length; i++) total += values[i] || 0;
  return total;
}

function render(stats) {
  const totals = stats.totals;
  const h = stats.history;
  setText('connections', formatCount(totals.connections));
  setText('subscriptions', formatCount(totals.subscriptions));
  setText('stored', formatCount(totals.stored));
  setText('accepted', formatCount(totals.pushes_accepted));
  let refused = 0;
  for (const [status, count] of Object.entries(totals.pushes)) if (Number(status) >= 300) refused += count;
  setText('refused', formatCount(refused));
  setText('deliveries', formatCount(totals.deliveries));
  setText('acks', formatCount(Object.values(totals.acks).reduce((a, b) => a + b, 0)));
  setText('uptime', formatUptime(stats.service.uptime));

  for (const [key, window] of [['1', stats.latency.last_minute], ['10', stats.latency.last_10_minutes]]) {
    setText('lat-' + key + '-count', formatCount(window.count));
    for (const p of ['p50', 'p90', 'p99']) setText('lat-' + key + '-' + p, formatSeconds(window[p]));
  }
  const rows = Object.entries(totals.pushes).map(([status, count]) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = status;
    const td = document.createElement('td');
    td.className = 'num';
    td.textContent = formatCount(count);
    tr.append(th, td);
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 2;
    td.textContent = 'No pushes yet.';
    tr.append(td);
    rows.push(tr);
  }
  $('statuses').replaceChildren(...rows);

  const now = h.t.length ? h.t[h.t.length - 1] : Math.floor(stats.time);
  const lastMinute = h.t.length - 60;
  drawChart($('chart-pushes'), h.t, [
    {values: h.pushes_2xx, cls: 's2xx'},
    {values: h.pushes_4xx, cls: 's4xx'},
    {values: h.pushes_5xx, cls: 's5xx'},
  ], now, 'Pushes in the last minute: ' + sum(h.pushes_2xx, lastMinute) + ' accepted, '
    + (sum(h.pushes_4xx, lastMinute) + sum(h.pushes_5xx, lastMinute)) + ' refused');
  drawChart($('chart-deliveries'), h.t, [{values: h.deliveries, cls: 'one'}], now,
    'Deliveries in the last minute: ' + sum(h.deliveries, lastMinute));
  const ms = values => values.map(v => (v === null ? null : v * 1000));
  drawChart($('chart-latency'), h.t, [
    {values: ms(h.p50), cls: 'p50'},
    {values: ms(h.p90), cls: 'p90'},
    {values: ms(h.p99), cls: 'p99'},
  ], now, 'Delivery latency p50 over the last minute: ' + formatSeconds(stats.latency.last_minute.p50));
  drawChart($('chart-connections'), h.t, [{values: h.connections, cls: 'one'}], now,
    'Connected user agents: ' + totals.connections);
  drawChart($('chart-stored'), h.t, [{values: h.stored, cls: 'one'}], now,
    'Stored messages: ' + (last(h.stored) ?? 'not counted yet'));
}

function setState(text, cls) {
  const state = $('state');
  state.className = 'status ' + cls;
  if (state.textContent !== text) state.textContent = text;
}

async function poll() {
  try {
    const response = await fetch('/api/stats', {headers, cache: 'no-store'});
    if (response.status === 401 || response.status === 403) {
      const problem = await response.json().catch(() => ({}));
      setState('Not allowed: ' + (problem.message || response.status)
        + '. Open this page as /dashboard?token=…', 'bad');
      return;
    }
    if (!response.ok) throw new Error('HTTP ' + response.status);
    const stats = await response.json();
    render(stats);
    document.body.dataset.updated = String(stats.time);
    setState('Live, updated ' + new Date(stats.time * 1000).toLocaleTimeString(), 'ok');
  } catch (err) {
    setState('Cannot reach the service (' + err.message + '); retrying.', 'bad');
  }
}

async function loop() {
  for (;;) {
    if (!document.hidden) await poll();
    await new Promise(resolve => setTimeout(resolve, POLL_MS));
  }
}

loop();
