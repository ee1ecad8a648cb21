// The gpuherd dashboard: GPUs, the queue, a job's page, topology, charts and chat, kept up to date by
// following /events/stream. Plain ES modules: no build step, nothing from another site. Every request
// is the browser's own (same origin, JSON bodies), so it acts as whoever the browser is logged in as.

import { barChart, hbarChart, lineChart } from './charts.js';

// -- small helpers ------------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (selector) => document.querySelector(selector);

// el's children become these (null, undefined and false are left out, as in h()).
function put(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

// Made once: a formatter per call would cost more than the rest of a queue row.
const CLOCK = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
const DAY = new Intl.DateTimeFormat([], { month: 'short', day: 'numeric' });

export function fmtTime(t) {
  if (t === null || t === undefined) return '—';
  const d = new Date(t * 1000);
  const hms = CLOCK.format(d);
  if (d.toDateString() === new Date().toDateString()) return hms;
  return `${DAY.format(d)} ${hms.slice(0, 5)}`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined) return '—';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

// "90m", "2h", "1h30m", "45s", "1d" or plain seconds -> seconds; null when empty.
export function parseDuration(text) {
  text = (text || '').trim();
  if (!text) return null;
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const units = { s: 1, m: 60, h: 3600, d: 86400 };
  let total = 0;
  const rest = text.replace(/(\d+(?:\.\d+)?)\s*([smhd])/g, (_, n, u) => { total += Number(n) * units[u]; return ''; });
  if (rest.trim() || !total) throw new Error(`${text} is not a duration; write e.g. 30s, 90m, 2h or 1h30m`);
  return total;
}

const gib = (mib) => (mib / 1024).toFixed(mib >= 10240 ? 0 : 1);
const now = () => Date.now() / 1000;

// -- talking to the server -------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(method, path, body) {
  const options = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (method !== 'GET') options.headers['Content-Type'] = 'application/json'; // the server's rule for changes
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || response.statusText);
  }
  return data;
}

const RECENT_EVENTS = 30;
const state = { session: null, view: null, events: [], stream: null, lastEventId: null };

function banner(message) {
  const el = $('#banner');
  el.textContent = message || '';
  el.hidden = !message;
}

// -- identity --------------------------------------------------------------------------------------------
async function loadSession() {
  try {
    state.session = await api('GET', '/dashboard/session');
  } catch (error) {
    state.session = { user: null, admin: false, via: error.status === 401 ? 'invalid' : 'anonymous', may_act: false,
      refused: null, mode: '', identity: '', model: null, metrics_interval_s: 5 };
  }
  const s = state.session;
  const who = $('#who');
  who.replaceChildren();
  if (s.user) {
    who.append(h('strong', { text: s.user }), ` ${s.admin ? '(admin' : '('}${s.admin ? ', ' : ''}${
      { cookie: 'logged in', loopback: 'this machine', token: 'token', socket: 'socket' }[s.via] || s.via})`);
  } else {
    who.append(s.via === 'invalid' ? 'token no longer valid' : 'not logged in (read-only)');
  }
  who.title = s.identity || '';
  $('#login-button').hidden = s.via === 'cookie';
  $('#logout-button').hidden = !(s.via === 'cookie' || s.via === 'invalid');
  $('#nav-chat').hidden = !s.model;
  if (s.refused) banner(s.refused);
}

function showLogin(message) {
  const dialog = $('#login');
  $('#login-error').textContent = message || '';
  $('#login-error').hidden = !message;
  if (!dialog.open) dialog.showModal();
}

function mayActOn(job) {
  const s = state.session;
  return Boolean(s && s.may_act && (s.admin || s.user === job.user));
}

// A job's log, command and environment are its owner's and the administrators'.
function mayRead(job) {
  const s = state.session;
  return Boolean(s && (s.admin || (s.user && s.user === job.user)));
}

function setUpLogin() {
  $('#login-button').addEventListener('click', () => showLogin(''));
  $('#login-cancel').addEventListener('click', () => $('#login').close());
  $('#logout-button').addEventListener('click', async () => {
    await api('POST', '/auth/logout', {});
    await loadSession();
    render();
  });
  $('#login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await api('POST', '/auth/login', { token: $('#login-token').value });
      $('#login-token').value = '';
      $('#login').close();
      banner('');
      await loadSession();
      render();
    } catch (error) {
      $('#login-error').textContent = error.message;
      $('#login-error').hidden = false;
    }
  });
}

// -- the event stream -------------------------------------------------------------------------------------
// From a few events before now, so the lists have something to show; a reconnection resumes by itself
// (the browser sends Last-Event-ID).
function follow() {
  const live = $('#live');
  const latest = state.session.latest_event_id;
  const stream = new EventSource(latest ? `/events/stream?after=${Math.max(0, latest - RECENT_EVENTS)}` : '/events/stream');
  state.stream = stream;
  stream.onopen = () => { live.textContent = 'live'; live.className = 'pill on'; };
  stream.onerror = () => { live.textContent = 'reconnecting'; live.className = 'pill off'; };
  stream.onmessage = (message) => {
    const event = JSON.parse(message.data);
    state.lastEventId = event.id;
    state.events.push(event);
    if (state.events.length > 200) state.events.splice(0, state.events.length - 200);
    if (latest && event.id <= latest) { // one of the recent events replayed for the lists: the views are current
      if (state.view && state.view.onHistory) state.view.onHistory();
      return;
    }
    refreshHeaderSoon();
    if (state.view && state.view.onEvent) state.view.onEvent(event);
  };
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

async function refreshHeader() {
  try {
    const s = await api('GET', '/orchestrator/status');
    const pill = $('#scheduler');
    pill.textContent = `${s.state} · ${s.policy}`;
    pill.className = `pill ${s.running ? 'on' : 'off'}`;
    pill.title = `${s.counts.running || 0} running, ${s.counts.queued || 0} waiting; ${s.identity}`;
  } catch { /* the banner of the view says what failed */ }
}
const refreshHeaderSoon = debounce(refreshHeader, 500);

function eventList(events, limit = 30) {
  const rows = events.slice(-limit).reverse().map((e) => h('li', {},
    h('time', { text: fmtTime(e.time) }), ' ',
    h('span', { class: `kind kind-${e.kind}`, text: e.kind }), ' ',
    e.job_id ? h('a', { href: `#/job/${e.job_id}`, text: `job ${e.job_id}` }) : null, e.job_id ? ' ' : null,
    e.message));
  return h('ul', { class: 'events' }, rows.length ? rows : h('li', { class: 'muted', text: 'No events yet.' }));
}

// -- views ------------------------------------------------------------------------------------------------
// Each view: mount(root, ...args) draws it; refresh() reloads its data; onEvent(event) reacts to the
// stream; unmount() stops its timers. ready(name) marks the first complete render (tests, benchmarks).
function ready(name) {
  document.body.dataset.ready = name;
  performance.mark(`herd:${name}`);
}

// A refresh that fails (the server restarting, a storage fault) says so in the banner, and the next works.
function quietly(promise) {
  Promise.resolve(promise).then(() => { if (lastFailure) { lastFailure = null; banner(''); } }, (error) => {
    lastFailure = error;
    if (error.status !== 401) banner(`The server did not answer: ${error.message}`);
  });
}
let lastFailure = null;

class View {
  constructor() { this.timers = []; this.alive = true; }
  every(ms, fn) { this.timers.push(setInterval(() => quietly(fn()), ms)); }
  unmount() { this.alive = false; this.timers.forEach(clearInterval); }
  onEvent() { this.soon(); }
  soon() {
    if (!this._soon) this._soon = debounce(() => this.alive && quietly(this.refresh()), 250);
    this._soon();
  }
}

const STATE_LABEL = { free: 'free', allocated: 'allocated', drained: 'drained', unhealthy: 'unhealthy',
  foreign: 'used outside gpuherd' };

function meter(label, value, max, text) {
  const pct = max ? Math.max(0, Math.min(100, (100 * value) / max)) : 0;
  const fill = h('span', { class: 'fill' });
  fill.style.width = `${pct}%`;
  return h('div', { class: 'meter', title: `${label}: ${text}` }, h('span', { class: 'meter-label', text: label }),
    h('span', { class: 'bar' }, fill), h('span', { class: 'meter-value', text }));
}

class GpusView extends View {
  mount(root) {
    this.root = root;
    this.every(Math.max(2, state.session.metrics_interval_s) * 1000, () => this.refresh());
    return this.refresh();
  }

  onEvent(event) {
    if (['scheduled', 'running', 'completed', 'failed', 'cancelled', 'queued', 'inventory', 'gpu_drained',
      'gpu_undrained', 'gpu_healthy', 'gpu_unhealthy', 'idle', 'requeueing'].includes(event.kind)) this.soon();
  }

  async refresh() {
    const status = await api('GET', '/gpu/status');
    if (!this.alive) return;
    const counts = {};
    for (const node of status.nodes) for (const gpu of node.gpus) counts[gpu.state] = (counts[gpu.state] || 0) + 1;
    const summary = h('div', { class: 'summary' }, h('span', { class: 'chip', text: `${status.total_gpus} GPUs` }),
      Object.entries(counts).map(([s, n]) => h('span', { class: `chip state-${s}`, text: `${n} ${STATE_LABEL[s] || s.replace(/_/g, ' ')}` })));
    const nodes = status.nodes.map((node) => h('section', { class: 'node' },
      h('h2', {}, node.name, ' ', h('span', { class: `badge ${node.source === 'nvml' ? 'detected' : 'declared'}`,
        text: node.source === 'nvml' ? 'detected' : 'declared',
        title: node.source === 'nvml' ? 'found through NVML' : 'declared by a person; nothing is measured' })),
      h('div', { class: 'gpu-grid' }, node.gpus.map((gpu) => this.tile(node, gpu)))));
    put(this.root,
      h('p', { class: `notice ${status.detected ? '' : 'declared'}`, text: status.notice }),
      status.metrics_error ? h('p', { class: 'error', text: `Live readings failed: ${status.metrics_error}` }) : null,
      summary, ...nodes);
    ready('gpus');
  }

  tile(node, gpu) {
    const measured = gpu.utilization_pct !== null || gpu.memory_used_mib !== null;
    const processes = gpu.processes || [];
    return h('article', { class: `gpu state-${gpu.state}`, dataset: { node: node.name, index: gpu.index, state: gpu.state } },
      h('header', {}, h('strong', { text: `GPU ${gpu.index}` }), h('span', { class: 'model', text: gpu.model || '' })),
      h('div', { class: 'state', text: STATE_LABEL[gpu.state] || gpu.state.replace(/_/g, ' ') }),
      gpu.job_id ? h('div', { class: 'holder' }, h('a', { href: `#/job/${gpu.job_id}`, text: `job ${gpu.job_id}` }),
        gpu.user ? ` · ${gpu.user}` : '') : null,
      gpu.utilization_pct !== null ? meter('util', gpu.utilization_pct, 100, `${gpu.utilization_pct}%`) : null,
      gpu.memory_used_mib !== null ? meter('mem', gpu.memory_used_mib, gpu.memory_total_mib || gpu.memory_used_mib,
        `${gib(gpu.memory_used_mib)}${gpu.memory_total_mib ? ` / ${gib(gpu.memory_total_mib)}` : ''} GiB`) : null,
      gpu.temperature_c !== null || gpu.power_w !== null ? h('div', { class: 'readings muted' },
        gpu.temperature_c !== null ? `${gpu.temperature_c} °C` : '', gpu.temperature_c !== null && gpu.power_w !== null ? ' · ' : '',
        gpu.power_w !== null ? `${Math.round(gpu.power_w)} W` : '') : null,
      !measured && node.source !== 'nvml' ? h('div', { class: 'readings muted', text: 'not measured' }) : null,
      gpu.in_use_by && gpu.in_use_by.length ? h('div', { class: 'foreign', text: `in use by ${gpu.in_use_by.join(', ')}`,
        title: 'processes outside gpuherd: the GPU takes no job until they end' }) : null,
      gpu.reason ? h('div', { class: 'reason', text: gpu.reason }) : null,
      processes.length ? h('ul', { class: 'procs' }, processes.map((p) => h('li', { class: p.foreign ? 'foreign' : '',
        text: `pid ${p.pid} ${p.name || ''}${p.user ? ` · ${p.user}` : ''}${p.job_id ? ` · job ${p.job_id}` : ''}`
          + `${p.foreign ? ' · outside gpuherd' : ''}${p.used_memory_mib ? ` · ${gib(p.used_memory_mib)} GiB` : ''}` }))) : null);
  }
}

// A job array's (id, index), where the job says it is part of one; null otherwise.
function arrayOf(job) {
  const id = job.array_id ?? job.array_job_id ?? (job.array && job.array.id);
  if (id === null || id === undefined) return null;
  return { id, index: job.array_index ?? job.array_task_id ?? (job.array && job.array.index) };
}

// Consecutive entries of the same array (and the same reason) fold into one row.
function fold(entries) {
  const rows = [];
  for (const entry of entries) {
    const array = arrayOf(entry.job);
    const last = rows[rows.length - 1];
    if (array && last && last.array && last.array.id === array.id && last.reason === entry.job.pending_reason) {
      last.entries.push(entry);
    } else {
      rows.push({ array, reason: entry.job.pending_reason, entries: [entry] });
    }
  }
  return rows;
}

const PAGE = 1000; // jobs in a page of GET /queue
const MAX_ROWS = 5000; // the most the page shows

class QueueView extends View {
  mount(root) {
    this.root = root;
    this.open = new Set();
    this.root.replaceChildren(this.form(), h('div', { id: 'queue-body' }), h('section', { class: 'panel' },
      h('h2', { text: 'Events' }), h('div', { id: 'queue-events' })));
    this.every(15000, () => this.refresh());
    return this.refresh();
  }

  onEvent() {
    this.soon();
    this.onHistory();
  }

  onHistory() {
    if (!this._list) {
      this._list = debounce(() => {
        const box = document.getElementById('queue-events');
        if (box) box.replaceChildren(eventList(state.events));
      }, 100);
    }
    this._list();
  }

  async refresh() {
    const view = await api('GET', `/queue?limit=${PAGE}`);
    while (view.next !== null && view.jobs.length < MAX_ROWS) { // the rest of the queue, a page at a time
      const more = await api('GET', `/queue?limit=${PAGE}&cursor=${view.next}`);
      view.jobs.push(...more.jobs);
      view.next = more.next;
    }
    if (!this.alive) return;
    this.draw(view);
    ready('queue');
  }

  draw(view) {
    const running = view.jobs.filter((e) => e.position === null);
    const waiting = view.jobs.filter((e) => e.position !== null);
    const st = view.stats;
    const body = document.getElementById('queue-body');
    put(body,
      h('p', { class: 'summary' },
        h('span', { class: 'chip', text: `${st.counts.running || 0} running` }),
        h('span', { class: 'chip', text: `${st.counts.queued || 0} waiting (${st.queued_gpus} GPUs)` }),
        h('span', { class: 'chip', text: `policy ${view.policy}` }),
        st.oldest_wait_s !== null ? h('span', { class: 'chip', text: `oldest wait ${fmtDuration(st.oldest_wait_s)}` }) : null),
      h('h2', { text: 'Running' }),
      running.length ? this.runningTable(running) : h('p', { class: 'muted', text: 'No job is running.' }),
      h('h2', { text: 'Waiting' }),
      waiting.length ? this.waitingTable(waiting) : h('p', { class: 'muted', text: 'No job is waiting.' }),
      view.next !== null ? h('p', { class: 'muted', text: `The first ${view.jobs.length} jobs are shown; more wait behind them (herd queue lists all).` }) : null);
    const box = document.getElementById('queue-events');
    if (box) box.replaceChildren(eventList(state.events));
  }

  runningTable(entries) {
    return h('table', { class: 'jobs', id: 'running' },
      h('thead', {}, h('tr', {}, ['Job', 'Name', 'User', 'GPUs', 'Where', 'Started', 'Running for', 'Limit']
        .map((c) => h('th', { text: c })))),
      h('tbody', {}, entries.map(({ job }) => h('tr', { class: 'job', dataset: { job: job.id, status: job.status } },
        h('td', {}, h('a', { href: `#/job/${job.id}`, text: job.id })),
        h('td', { text: job.name || '' }), h('td', { text: job.user }), h('td', { class: 'num', text: job.gpu_count }),
        h('td', { text: job.allocation ? `${job.allocation.node}: ${job.allocation.gpus.join(',')}` : '' }),
        h('td', { text: fmtTime(job.start_time) }),
        h('td', { text: job.start_time ? fmtDuration(now() - job.start_time) : job.status }),
        h('td', { text: job.time_limit_s ? fmtDuration(job.time_limit_s) : '' })))));
  }

  waitingTable(entries) {
    const rows = [];
    for (const group of fold(entries)) {
      if (group.entries.length > 1 && !this.open.has(group.array.id)) {
        const first = group.entries[0];
        const indices = group.entries.map((e) => arrayOf(e.job).index).filter((i) => i !== undefined && i !== null);
        const range = indices.length ? `[${Math.min(...indices)}-${Math.max(...indices)}]` : '';
        rows.push(h('tr', { class: 'job array', dataset: { array: group.array.id } },
          h('td', { class: 'num', text: first.position }),
          h('td', {}, h('button', { type: 'button', class: 'link', text: `${group.array.id}${range} ▸`,
            title: 'show each task', onclick: () => { this.open.add(group.array.id); this.soon(); } })),
          h('td', { text: `${first.job.name || ''} (${group.entries.length} tasks)` }), h('td', { text: first.job.user }),
          h('td', { class: 'num', text: first.job.gpu_count }), h('td', { class: 'num', text: first.job.priority }),
          h('td', { title: first.job.pending_message || '', text: first.job.pending_reason || '' }),
          h('td', { text: fmtTime(first.estimated_start) }), h('td', { text: fmtDuration(now() - first.job.submit_time) })));
      } else {
        for (const entry of group.entries) rows.push(this.waitingRow(entry));
      }
    }
    return h('table', { class: 'jobs', id: 'waiting' },
      h('thead', {}, h('tr', {}, ['#', 'Job', 'Name', 'User', 'GPUs', 'Prio', 'Reason', 'Est. start', 'Waiting']
        .map((c) => h('th', { text: c })))),
      h('tbody', {}, rows));
  }

  waitingRow({ job, position, estimated_start: start }) {
    return h('tr', { class: 'job', dataset: { job: job.id, status: job.status } },
      h('td', { class: 'num', text: position }),
      h('td', {}, h('a', { href: `#/job/${job.id}`, text: job.id })),
      h('td', { text: job.name || '' }), h('td', { text: job.user }), h('td', { class: 'num', text: job.gpu_count }),
      h('td', { class: 'num', text: job.priority }),
      h('td', { class: 'reason', title: job.pending_message || '', text: job.pending_reason || '' }),
      h('td', { text: start ? fmtTime(start) : '—' }), h('td', { text: fmtDuration(now() - job.submit_time) }));
  }

  form() {
    const field = (label, input, hint) => h('label', {}, h('span', { text: label }), input, hint ? h('small', { text: hint }) : null);
    const message = h('p', { class: 'form-message', role: 'status' });
    const form = h('form', { id: 'submit-form', class: 'submit' },
      field('Command', h('textarea', { name: 'command', rows: 2, required: true, placeholder: 'python train.py --lr 3e-4' })),
      h('div', { class: 'row' },
        field('GPUs', h('input', { name: 'gpu_count', type: 'number', min: 1, value: 1, required: true })),
        field('Priority', h('input', { name: 'priority', type: 'number', min: 1, max: 10, value: 5 })),
        field('Name', h('input', { name: 'name', maxlength: 200 })),
        field('Time limit', h('input', { name: 'time_limit', placeholder: '2h' })),
        field('Estimate', h('input', { name: 'estimate', placeholder: '90m' })),
        field('Begin', h('input', { name: 'begin_at', placeholder: '22:00 or +3h' })),
        field('After jobs', h('input', { name: 'after', placeholder: '12,13' })),
        field('Directory', h('input', { name: 'cwd', placeholder: 'on the server' })),
        state.session.admin ? field('For user', h('input', { name: 'user', placeholder: state.session.user || '' })) : null,
        h('label', { class: 'check' }, h('input', { name: 'preemptible', type: 'checkbox' }), ' preemptible')),
      h('button', { type: 'submit', class: 'primary', text: 'Submit' }), message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const f = new FormData(form);
      try {
        const body = { command: f.get('command'), gpu_count: Number(f.get('gpu_count')), priority: Number(f.get('priority') || 5),
          preemptible: f.get('preemptible') === 'on' };
        const text = (k) => (f.get(k) || '').trim() || null;
        if (text('name')) body.name = text('name');
        if (text('cwd')) body.cwd = text('cwd');
        if (text('user')) body.user = text('user');
        if (text('begin_at')) body.begin_at = text('begin_at');
        const limit = parseDuration(f.get('time_limit'));
        if (limit) body.time_limit_s = limit;
        const estimate = parseDuration(f.get('estimate'));
        if (estimate) body.est_duration_s = estimate;
        if (text('after')) body.after = text('after').split(/[\s,]+/).filter(Boolean).map(Number);
        const done = await api('POST', '/queue/submit', body);
        message.className = 'form-message ok';
        message.replaceChildren('Queued ', h('a', { href: `#/job/${done.job_id}`, text: `job ${done.job_id}` }),
          done.position ? ` at position ${done.position}.` : '.');
        form.elements.command.value = '';
        this.soon();
      } catch (error) {
        message.className = 'form-message error';
        message.textContent = error.message;
      }
    });
    return h('details', { class: 'panel', open: state.session.may_act },
      h('summary', { text: state.session.may_act ? 'Submit a job' : 'Submit a job (log in first)' }), form);
  }
}

class JobView extends View {
  mount(root, id) {
    this.root = root;
    this.id = Number(id);
    this.logOffset = null;
    this.root.replaceChildren(h('p', { class: 'muted', text: `Loading job ${id}…` }));
    this.every(1000, () => this.followLog());
    return this.refresh();
  }

  onEvent(event) {
    if (event.job_id === this.id || ['scheduled', 'running', 'completed', 'failed', 'cancelled'].includes(event.kind)) this.soon();
  }

  async refresh() {
    let job;
    try {
      job = await api('GET', `/jobs/${this.id}`);
    } catch (error) {
      this.root.replaceChildren(h('p', { class: 'error', text: error.message }));
      ready('job');
      return;
    }
    const [events, explain] = await Promise.all([
      api('GET', `/jobs/${this.id}/events`), api('GET', `/jobs/${this.id}/explain`).catch(() => null)]);
    if (!this.alive) return;
    this.job = job;
    const log = document.getElementById('log') || h('pre', { id: 'log', class: 'log', text: '' });
    put(this.root,
      h('h1', {}, `Job ${job.id}`, job.name ? ` · ${job.name}` : '', ' ', h('span', { class: `job-status status-${job.status}`, id: 'job-status', text: job.status })),
      this.controls(job),
      h('div', { class: 'columns' },
        h('section', { class: 'panel' }, h('h2', { text: 'Record' }), this.record(job)),
        explain ? h('section', { class: 'panel' }, h('h2', { text: 'Why and when' }), this.explain(explain)) : null),
      h('section', { class: 'panel' }, h('h2', { text: 'Events' }), this.events(events)),
      h('section', { class: 'panel' }, h('h2', { text: 'Log' }), log));
    if (this.logOffset === null) await this.followLog();
    ready('job');
  }

  controls(job) {
    const message = h('p', { id: 'job-message', class: 'form-message', role: 'status' });
    if (!mayActOn(job)) {
      return h('div', { class: 'controls' }, h('span', { class: 'muted', text: state.session.user
        ? `${job.user}'s job: only ${job.user} and administrators may change it.`
        : 'Log in to change your jobs.' }), message);
    }
    const active = ['queued', 'scheduled', 'running'].includes(job.status);
    const act = (fn) => async () => {
      try {
        await fn();
        message.className = 'form-message ok';
        message.textContent = 'Done.';
        this.soon();
      } catch (error) {
        message.className = 'form-message error';
        message.textContent = error.message;
      }
    };
    const priority = h('select', { id: 'priority-select', 'aria-label': 'priority' },
      Array.from({ length: 10 }, (_, i) => h('option', { value: i + 1, text: i + 1, selected: i + 1 === job.priority })));
    return h('div', { class: 'controls' },
      active ? h('button', { type: 'button', id: 'cancel-job', class: 'danger', text: job.status === 'queued' ? 'Cancel job' : 'Stop job',
        onclick: act(() => api('DELETE', `/queue/${job.id}`)) }) : null,
      job.status === 'queued' ? h('span', { class: 'inline' }, 'Priority ', priority,
        h('button', { type: 'button', id: 'set-priority', text: 'Set',
          onclick: act(() => api('PATCH', `/queue/${job.id}/priority`, { priority: Number(priority.value) })) })) : null,
      message);
  }

  record(job) {
    const rows = [
      ['Status', job.status], ['User', job.user], ['GPUs', job.gpu_count], ['Priority', job.priority],
      ['Where', job.allocation ? `${job.allocation.node} GPU ${job.allocation.gpus.join(',')}` : null],
      ['Position', job.position], ['Estimated start', job.estimated_start ? fmtTime(job.estimated_start) : null],
      ['Pending', job.pending_reason ? `${job.pending_reason}: ${job.pending_message || ''}` : null],
      ['Submitted', fmtTime(job.submit_time)], ['Started', job.start_time ? fmtTime(job.start_time) : null],
      ['Ended', job.end_time ? fmtTime(job.end_time) : null], ['Exit code', job.exit_code],
      ['Attempts', `${job.attempts} (retries ${job.max_retries}, preemptions ${job.preemptions})`],
      ['Time limit', job.time_limit_s ? fmtDuration(job.time_limit_s) : null],
      ['Estimate', job.est_duration_s ? `${fmtDuration(job.est_duration_s)} (${job.est_source})` : null],
      ['Begin', job.not_before ? fmtTime(job.not_before) : null],
      ['After', [...(job.after || []), ...(job.after_any || [])].join(', ') || null],
      ['GPU use', job.gpu_usage && job.gpu_usage.samples ? `utilization ${Math.round(job.gpu_usage.utilization_mean_pct)}% `
        + `mean, ${Math.round(job.gpu_usage.utilization_peak_pct)}% peak; memory ${gib(job.gpu_usage.memory_mean_mib)} GiB mean, `
        + `${gib(job.gpu_usage.memory_peak_mib)} GiB peak` : null],
      ['May idle', job.allow_idle ? 'yes' : null],
      ['Preemptible', job.preemptible ? 'yes' : null], ['Stopping', job.stop_reason],
      ['Command', job.command || null], ['Directory', job.cwd],
    ];
    return h('dl', { class: 'record' }, rows.filter(([, v]) => v !== null && v !== undefined && v !== '')
      .map(([k, v]) => [h('dt', { text: k }), h('dd', { class: k === 'Command' ? 'code' : '', text: String(v) })]).flat());
  }

  explain(x) {
    return h('div', {},
      h('p', {}, x.reason ? h('strong', { text: `${x.reason}: ` }) : null, x.message),
      x.position ? h('p', { text: `Position ${x.position} under ${x.policy}${x.estimated_start ? `; expected to start at ${fmtTime(x.estimated_start)}` : ''}.` }) : null,
      x.factors ? h('table', { class: 'factors' },
        h('thead', {}, h('tr', {}, ['Factor', 'Value', 'Weight', 'Points', ''].map((c) => h('th', { text: c })))),
        h('tbody', {}, x.factors.map((f) => h('tr', {}, h('td', { text: f.name }), h('td', { class: 'num', text: f.value.toFixed(3) }),
          h('td', { class: 'num', text: f.weight }), h('td', { class: 'num', text: f.points.toFixed(1) }), h('td', { class: 'muted', text: f.detail })))),
        h('tfoot', {}, h('tr', {}, h('td', { text: 'total' }), h('td'), h('td'), h('td', { class: 'num', text: x.total.toFixed(1) }), h('td')))) : null,
      x.note ? h('p', { class: 'muted', text: x.note }) : null,
      x.user_quota ? h('p', { class: 'muted', text: `Quota of ${x.user_quota.name}: ${x.user_quota.in_use} in use of ${x.user_quota.quota ?? 'no limit'}` +
        (x.group_quota ? `; group ${x.group_quota.name}: ${x.group_quota.in_use} of ${x.group_quota.quota ?? 'no limit'}` : '') }) : null);
  }

  events(events) {
    return h('table', { class: 'events-table' }, h('tbody', {}, events.map((e) => h('tr', {},
      h('td', { class: 'muted', text: fmtTime(e.time) }), h('td', {}, h('span', { class: `kind kind-${e.kind}`, text: e.kind })),
      h('td', { text: e.message })))));
  }

  async followLog() {
    const log = document.getElementById('log');
    if (!log || !this.job || this.logBusy || this.logRefused) return;
    if (!mayRead(this.job)) {
      log.textContent = `The log is ${this.job.user}'s and the administrators'.`;
      return;
    }
    if (this.logOffset !== null && !['scheduled', 'running'].includes(this.job.status)) return;
    this.logBusy = true;
    try {
      const query = this.logOffset === null ? 'tail=200' : `offset=${this.logOffset}`;
      const chunk = await api('GET', `/jobs/${this.id}/logs?${query}`);
      if (this.logOffset === null) log.textContent = chunk.text || (this.job.status === 'queued' ? '(not started yet)' : '(empty)');
      else if (chunk.text) {
        if (['(not started yet)', '(empty)'].includes(log.textContent)) log.textContent = '';
        log.textContent = (log.textContent + chunk.text).slice(-200000);
      }
      this.logOffset = chunk.next_offset;
      log.scrollTop = log.scrollHeight;
    } catch (error) {
      log.textContent = error.message;
      this.logRefused = error.status === 401 || error.status === 403;
    } finally {
      this.logBusy = false;
    }
  }
}

class TopologyView extends View {
  mount(root) {
    this.root = root;
    return this.refresh();
  }

  onEvent(event) {
    if (['scheduled', 'running', 'completed', 'failed', 'cancelled', 'queued', 'inventory'].includes(event.kind)) this.soon();
  }

  async refresh() {
    const topo = await api('GET', '/dashboard/topology');
    if (!this.alive) return;
    const NS = 'http://www.w3.org/2000/svg';
    const el = (tag, attrs = {}, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      return e;
    };
    const perRow = 8;
    const cell = 64;
    const drawings = topo.nodes.map((node) => {
      const rows = Math.ceil(node.gpus.length / perRow) || 1;
      const width = 40 + Math.min(perRow, node.gpus.length || 1) * cell;
      const height = 60 + rows * cell;
      const svg = el('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'topology', role: 'img' });
      svg.append(el('rect', { x: 2, y: 2, width: width - 4, height: height - 4, rx: 10, class: 'node-box' }));
      svg.append(el('text', { x: 16, y: 26, class: 'node-name' }, `${node.name} (${node.source === 'nvml' ? 'detected' : 'declared'})`));
      const at = {};
      node.gpus.forEach((gpu, k) => {
        const x = 20 + (k % perRow) * cell;
        const y = 44 + Math.floor(k / perRow) * cell;
        at[gpu.index] = [x + 24, y + 20];
        const g = el('g', { class: `gpu-box state-${gpu.state}` });
        g.append(el('rect', { x, y, width: 48, height: 40, rx: 6 }));
        g.append(el('text', { x: x + 24, y: y + 18, 'text-anchor': 'middle' }, `GPU ${gpu.index}`));
        g.append(el('text', { x: x + 24, y: y + 32, 'text-anchor': 'middle', class: 'small' }, gpu.job_id ? `job ${gpu.job_id}` : gpu.state));
        g.append(el('title', {}, `${gpu.uuid}${gpu.model ? ` · ${gpu.model}` : ''}${gpu.user ? ` · ${gpu.user}` : ''}`));
        svg.append(g);
      });
      for (const link of topo.links.filter((l) => l.node === node.name)) {
        const [a, b] = [at[link.a], at[link.b]];
        if (!a || !b) continue;
        const line = el('line', { x1: a[0], y1: a[1], x2: b[0], y2: b[1], class: `link link-${link.kind.toLowerCase().replace(/\W+/g, '-')}` });
        line.append(el('title', {}, link.kind));
        svg.insertBefore(line, svg.children[2]);
      }
      return h('div', { class: 'topology-node' }, svg);
    });
    put(this.root,
      h('p', { class: 'notice', text: topo.links.length ? `${topo.links.length} links between GPUs, as NVML reports them.` : `No links shown: ${topo.links_note}.` }),
      h('div', { class: 'topology-grid' }, drawings));
    ready('topology');
  }
}

const CHARTS = [
  ['chart-busy', 'GPUs busy and free'], ['chart-queue', 'Queue length'], ['chart-node-util', 'Utilization per node (%)'],
  ['chart-gpu-util', 'Utilization per GPU (%)'], ['chart-jobs', 'Jobs started and finished per hour'],
  ['chart-waits', 'Waits (minutes)'], ['chart-gpu-hours', 'GPU-hours per user, last 24 h'],
];

class ChartsView extends View {
  mount(root) {
    this.root = root;
    root.replaceChildren(h('p', { class: 'muted', id: 'charts-note' }),
      h('div', { class: 'charts' }, CHARTS.map(([id, title]) => h('section', { class: 'panel chart-panel' },
        h('h2', { text: title }), h('div', { id, class: 'chart-box' })))));
    this.every(Math.max(2, state.session.metrics_interval_s) * 1000, () => this.refresh());
    this.onResize = debounce(() => this.history && this.draw(this.history), 200);
    window.addEventListener('resize', this.onResize);
    return this.refresh();
  }

  unmount() {
    super.unmount();
    window.removeEventListener('resize', this.onResize);
  }

  onEvent() { /* the charts refresh on their own clock: the server samples every metrics_interval_s */ }

  async refresh() {
    const history = await api('GET', '/dashboard/history?hours=24');
    if (!this.alive) return;
    this.history = history;
    this.draw(history);
    ready('charts');
  }

  draw(x) {
    const s = x.samples;
    const every = x.sample_interval_s ? `every ${Math.round(x.sample_interval_s)} s` : `every ${state.session.metrics_interval_s} s`;
    document.getElementById('charts-note').textContent = `Samples ${every}, the last ${s.time.length}; hourly figures from the event log.`;
    const waiting = 'No samples yet: the server takes one every metrics interval.';
    lineChart(document.getElementById('chart-busy'), { times: s.time, emptyText: waiting, series: [
      { name: 'busy', values: s.busy }, { name: 'free', values: s.free },
      ...(s.drained.some((v) => v) ? [{ name: 'drained', values: s.drained }] : []),
      ...(s.unhealthy.some((v) => v) ? [{ name: 'unhealthy', values: s.unhealthy }] : [])] });
    lineChart(document.getElementById('chart-queue'), { times: s.time, emptyText: waiting, series: [
      { name: 'waiting jobs', values: s.queued }, { name: 'GPUs asked for', values: s.queued_gpus }] });
    const unmeasured = x.detected ? 'No utilization measured yet.' : 'Nothing measured: the inventory is declared, not detected.';
    lineChart(document.getElementById('chart-node-util'), { times: s.time, yMax: 100, emptyText: unmeasured,
      series: Object.entries(s.node_utilization).map(([name, values]) => ({ name, values })) });
    lineChart(document.getElementById('chart-gpu-util'), { times: s.time, yMax: 100, emptyText: unmeasured,
      series: Object.entries(s.gpu_utilization).map(([name, values]) => ({ name, values })) });
    const hourLabel = (t) => `${String(new Date(t * 1000).getHours()).padStart(2, '0')}h`;
    barChart(document.getElementById('chart-jobs'), { labels: x.hours.map((hr) => hourLabel(hr.start)),
      emptyText: 'No job started or finished in the last 24 hours.', series: [
        { name: 'started', values: x.hours.map((hr) => hr.started) },
        { name: 'finished', values: x.hours.map((hr) => Object.values(hr.finished).reduce((a, b) => a + b, 0)) }] });
    const waitsTimes = x.waits.map((w) => w[0]);
    lineChart(document.getElementById('chart-waits'), { times: waitsTimes, points: true,
      emptyText: 'No job started in the last 24 hours.', series: [{ name: 'wait of each start', values: x.waits.map((w) => w[1] / 60) }] });
    hbarChart(document.getElementById('chart-gpu-hours'), { emptyText: 'No GPU time used in the last 24 hours.',
      items: Object.entries(x.gpu_hours_by_user).map(([name, value]) => ({ name, value })),
      format: (v) => `${v < 10 ? v.toFixed(2) : v.toFixed(1)} GPU-h` });
  }
}

class ChatView extends View {
  mount(root) {
    this.root = root;
    this.sessionId = null;
    const log = h('div', { id: 'chat-log', class: 'chat-log' });
    const input = h('textarea', { id: 'chat-input', rows: 2, placeholder: 'I need 4 GPUs for about 3 hours to fine-tune -- python ft.py' });
    const send = h('button', { type: 'submit', class: 'primary', text: 'Ask' });
    const form = h('form', { class: 'chat-form' }, input, send);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const message = input.value.trim();
      if (!message) return;
      log.append(h('div', { class: 'bubble you', text: message }));
      input.value = '';
      send.disabled = true;
      try {
        const reply = await api('POST', '/chat', { message, session_id: this.sessionId });
        this.sessionId = reply.session_id;
        log.append(h('div', { class: 'bubble agent' }, h('p', { text: reply.reply }), this.actions(reply.actions),
          reply.stop !== 'answered' ? h('p', { class: 'muted', text: `stopped: ${reply.stop}` }) : null));
      } catch (error) {
        log.append(h('div', { class: 'bubble error', text: error.message }));
      } finally {
        send.disabled = false;
        log.scrollTop = log.scrollHeight;
      }
    });
    root.replaceChildren(h('p', { class: 'muted', text: `The agent (${state.session.model}) acts for you only, through the same tools as the API; the validator judges every action.` }), log, form);
    ready('chat');
  }

  onEvent() {}

  refresh() {}

  actions(actions) {
    if (!actions.length) return null;
    return h('table', { class: 'actions' },
      h('thead', {}, h('tr', {}, ['Action', 'Arguments', 'Verdict', 'Detail'].map((c) => h('th', { text: c })))),
      h('tbody', {}, actions.map((a) => h('tr', {},
        h('td', { text: a.tool }), h('td', { class: 'code', text: JSON.stringify(a.arguments) }),
        h('td', {}, h('span', { class: `verdict verdict-${a.verdict}`, text: a.verdict })), h('td', { text: a.detail || '' })))));
  }
}

// -- routing ----------------------------------------------------------------------------------------------
const VIEWS = { gpus: GpusView, queue: QueueView, job: JobView, topology: TopologyView, charts: ChartsView, chat: ChatView };

async function render() {
  const [name, arg] = (location.hash.replace(/^#\/?/, '') || 'gpus').split('/');
  const Kind = VIEWS[name] || GpusView;
  if (state.view) state.view.unmount();
  delete document.body.dataset.ready;
  document.body.dataset.view = name;
  for (const a of document.querySelectorAll('#nav a[data-view]')) a.classList.toggle('active', a.dataset.view === name);
  const root = $('#view');
  root.replaceChildren();
  const view = new Kind();
  state.view = view;
  try {
    await view.mount(root, arg);
  } catch (error) {
    if (state.view === view) root.replaceChildren(h('p', { class: 'error', text: error.message }));
  }
}

async function start() {
  setUpLogin();
  await loadSession();
  window.addEventListener('hashchange', render);
  follow();
  refreshHeader();
  await render();
}

start();
