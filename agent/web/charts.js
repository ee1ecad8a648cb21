// Small SVG charts for the dashboard: lines over time, grouped bars, horizontal bars and points.
// No library: a few hundred lines draw what the page needs, and nothing is loaded from elsewhere.

const NS = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#2f6fb3', '#2e9e6e', '#d9822b', '#c0392b', '#7d5ba6', '#16a2b8', '#8c6d31', '#d63384',
  '#5c7080', '#a0a93b'];
const HEIGHT = 190;
const MARGIN = { top: 10, right: 12, bottom: 24, left: 44 };

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// The top of the y axis: four gridline steps of a round size (1, 2, 2.5, 5, ... x 10^k) that reach value.
function niceMax(value) {
  if (!(value > 0)) return 4;
  const quarter = value / 4;
  const power = 10 ** Math.floor(Math.log10(quarter));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= quarter) return 4 * step * power;
  return 40 * power;
}

function clock(t) {
  const d = new Date(t * 1000);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}

function frame(el, yMax, yFormat) {
  el.replaceChildren();
  const width = Math.max(260, el.clientWidth || 480);
  const root = svg('svg', { viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT, class: 'chart', role: 'img' });
  const inner = { x0: MARGIN.left, x1: width - MARGIN.right, y0: HEIGHT - MARGIN.bottom, y1: MARGIN.top };
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    const y = inner.y0 - ((inner.y0 - inner.y1) * i) / 4;
    root.append(svg('line', { x1: inner.x0, x2: inner.x1, y1: y, y2: y, class: i ? 'grid' : 'axis' }));
    root.append(svg('text', { x: inner.x0 - 6, y: y + 4, 'text-anchor': 'end', class: 'tick' }, yFormat(v)));
  }
  el.append(root);
  return { root, inner, width };
}

function legend(el, names) {
  const box = document.createElement('div');
  box.className = 'legend';
  names.forEach((name, i) => {
    const item = document.createElement('span');
    const swatch = document.createElement('i');
    swatch.style.background = PALETTE[i % PALETTE.length];
    item.append(swatch, name);
    box.append(item);
  });
  el.append(box);
}

function empty(el, message) {
  el.replaceChildren();
  const p = document.createElement('p');
  p.className = 'empty';
  p.textContent = message;
  el.append(p);
  el.dataset.drawn = 'empty';
}

const plain = (v) => (Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1));

// series: [{name, values: [number|null]}], times: [seconds]; null values break the line.
export function lineChart(el, { times, series, yMax, yFormat = plain, emptyText = 'No data yet.', points = false }) {
  const drawn = series.filter((s) => s.values.some((v) => v !== null && v !== undefined));
  if (!times.length || !drawn.length) return empty(el, emptyText);
  const top = niceMax(yMax ?? Math.max(...drawn.flatMap((s) => s.values.filter((v) => v !== null))));
  const { root, inner } = frame(el, top, yFormat);
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const span = t1 - t0 || 1;
  const x = (t) => inner.x0 + ((inner.x1 - inner.x0) * (t - t0)) / span;
  const y = (v) => inner.y0 - ((inner.y0 - inner.y1) * Math.min(v, top)) / top;
  for (let i = 0; i <= 3; i++) {
    const t = t0 + (span * i) / 3;
    root.append(svg('text', { x: x(t), y: HEIGHT - 6, 'text-anchor': ['start', 'middle', 'middle', 'end'][i],
      class: 'tick' }, clock(t)));
  }
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    if (points) {
      s.values.forEach((v, k) => {
        if (v !== null && v !== undefined) {
          root.append(svg('circle', { cx: x(times[k]), cy: y(v), r: 2.5, fill: color, class: 'series' }));
        }
      });
      return;
    }
    let d = '';
    let pen = 'M';
    s.values.forEach((v, k) => {
      if (v === null || v === undefined) { pen = 'M'; return; }
      d += `${pen}${x(times[k]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = 'L';
    });
    if (d) root.append(svg('path', { d, stroke: color, fill: 'none', 'stroke-width': 1.8, class: 'series' }));
  });
  legend(el, series.map((s) => s.name));
  el.dataset.drawn = 'true';
}

// labels: [text], series: [{name, values: [number]}]: one group of bars per label.
export function barChart(el, { labels, series, yFormat = plain, emptyText = 'No data yet.' }) {
  const all = series.flatMap((s) => s.values);
  if (!labels.length || !all.some((v) => v > 0)) return empty(el, emptyText);
  const top = niceMax(Math.max(...all));
  const { root, inner } = frame(el, top, yFormat);
  const slot = (inner.x1 - inner.x0) / labels.length;
  const bar = Math.max(1, (slot * 0.8) / series.length);
  const every = Math.ceil(labels.length / 8);
  labels.forEach((label, k) => {
    series.forEach((s, i) => {
      const v = s.values[k] || 0;
      const h = ((inner.y0 - inner.y1) * v) / top;
      if (h > 0) {
        const rect = svg('rect', { x: inner.x0 + slot * k + slot * 0.1 + bar * i, y: inner.y0 - h, width: bar, height: h,
          fill: PALETTE[i % PALETTE.length], class: 'series' });
        rect.append(svg('title', {}, `${label}: ${s.name} ${plain(v)}`));
        root.append(rect);
      }
    });
    if (k % every === 0) {
      root.append(svg('text', { x: inner.x0 + slot * (k + 0.5), y: HEIGHT - 6, 'text-anchor': 'middle', class: 'tick' }, label));
    }
  });
  legend(el, series.map((s) => s.name));
  el.dataset.drawn = 'true';
}

// items: [{name, value}], drawn largest first, one bar each.
export function hbarChart(el, { items, format = plain, emptyText = 'No data yet.' }) {
  const shown = items.filter((it) => it.value > 0).sort((a, b) => b.value - a.value).slice(0, 12);
  if (!shown.length) return empty(el, emptyText);
  el.replaceChildren();
  const width = Math.max(260, el.clientWidth || 480);
  const row = 22;
  const height = row * shown.length + 8;
  const root = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart', role: 'img' });
  const left = 110;
  const top = Math.max(...shown.map((it) => it.value));
  shown.forEach((it, k) => {
    const w = ((width - left - 100) * it.value) / top;
    root.append(svg('text', { x: left - 8, y: 4 + row * k + 15, 'text-anchor': 'end', class: 'label' }, it.name));
    root.append(svg('rect', { x: left, y: 4 + row * k + 3, width: Math.max(1, w), height: row - 8,
      fill: PALETTE[k % PALETTE.length], class: 'series' }));
    root.append(svg('text', { x: left + w + 6, y: 4 + row * k + 15, class: 'label' }, format(it.value)));
  });
  el.append(root);
  el.dataset.drawn = 'true';
}
