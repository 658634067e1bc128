// Building the DOM without HTML strings, and formatting what the API gives.
//
// Everything the API returns is data from outside (saga ids, payloads, reasons), so it
// reaches the page only as text nodes and attribute values: `h` never parses markup,
// and refuses `innerHTML` and inline `style` (the console's CSP forbids inline styles).

let reportError = (err) => { throw err; };

// Where an error thrown by an async event handler goes (app.js shows it in the page).
export function setErrorReporter(fn) {
  reportError = fn;
}

// Properties set as such rather than as attributes: their live value matters.
const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'open', 'required', 'indeterminate']);

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Replaces an element's children with `children`, as h() takes them (strings become
// text; null, false and nesting are fine).
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// h('a', {href: '#/x', class: 'y', onclick: fn}, 'text', otherNode, [more]) builds an
// element. Attributes with null, undefined or false are left out; `dataset` takes an
// object; `on<event>` takes a listener (an async listener's rejection is reported).
// Children are appended before the attributes are set, so a <select>'s value sticks.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  append(el, children);
  setAttrs(el, attrs);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'style' || key === 'innerHTML') throw new Error(`h: ${key} is not allowed`);
    if (key === 'class') el.setAttribute('class', value);
    else if (key === 'dataset') for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    else if (key.startsWith('on') && typeof value === 'function') listen(el, key.slice(2), value);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function listen(el, type, fn) {
  el.addEventListener(type, (event) => {
    const result = fn(event);
    if (result && typeof result.then === 'function') result.catch((err) => reportError(err));
  });
}

const SVG_NS = 'http://www.w3.org/2000/svg';

// The same for SVG elements: every attribute is set with setAttribute.
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value != null && key !== 'style') el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

// True for the rejection of a fetch that was aborted because the page was left.
export function isAbort(err) {
  return err && err.name === 'AbortError';
}

// A status (saga or step) as a colour-coded badge. The class is derived from the value,
// with anything but letters, digits and underscores dropped.
export function badge(status, extra = '') {
  const text = status == null ? '—' : String(status);
  const cls = text.toLowerCase().replace(/[^a-z0-9_]/g, '');
  return h('span', { class: `badge s-${cls} ${extra}`.trim() }, text);
}

const pad = (n, width = 2) => String(n).padStart(width, '0');

// An RFC 3339 time as local "YYYY-MM-DD HH:MM:SS(.mmm)", in a <time> whose title is
// the exact UTC value.
export function time(iso, { ms = false } = {}) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  let text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (ms) text += `.${pad(d.getMilliseconds(), 3)}`;
  return h('time', { datetime: iso, title: `${iso} (UTC)` }, text);
}

// A duration in milliseconds, in the largest units that keep it short:
// "120 ms", "2.4 s", "3 min 5 s", "2 h 10 min", "4 d 3 h".
export function duration(ms) {
  if (ms == null || !Number.isFinite(ms)) return '—';
  const abs = Math.abs(ms);
  const sign = ms < 0 ? '-' : '';
  if (abs < 1000) return `${sign}${Math.round(abs)} ms`;
  const s = abs / 1000;
  if (s < 60) return `${sign}${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const total = Math.floor(s);
  const [d, hr, min, sec] = [Math.floor(total / 86400), Math.floor(total / 3600) % 24, Math.floor(total / 60) % 60, total % 60];
  const two = (big, bigUnit, small, smallUnit) => `${sign}${big} ${bigUnit}${small ? ` ${small} ${smallUnit}` : ''}`;
  if (d) return two(d, 'd', hr, 'h');
  if (hr) return two(hr, 'h', min, 'min');
  return two(min, 'min', sec, 's');
}

// A value as pretty JSON text (for <pre>), "—" for null.
export function json(value) {
  return value === undefined ? '—' : JSON.stringify(value, null, 2);
}

// A number as a share of a total: "33.3%", "50%", "0%" when the total is 0.
export function share(n, total) {
  if (!total) return '0%';
  return `${Number(((n / total) * 100).toFixed(1))}%`;
}

// A saga id as a link to its page.
export function sagaLink(id) {
  return h('a', { href: `#/sagas/${encodeURIComponent(id)}`, class: 'mono' }, id);
}

// A table inside a wrapper that scrolls sideways on a narrow window.
export function table(attrs, headers, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('thead', null, h('tr', null, headers.map((text) => h('th', { scope: 'col' }, text)))),
      h('tbody', null, rows)));
}

// "1 saga", "2 sagas".
export function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

// An action of a page, then the page again: `call` runs (its error shown in
// `errorEl`, a leaving page's abort ignored), and `reload` shows what it changed —
// also after an error, since a call may have done part of its work. A failing reload
// fails the page.
export async function actThenReload(ctx, call, errorEl, reload) {
  errorEl.hidden = true;
  ctx.loading();
  try {
    await call();
  } catch (err) {
    if (isAbort(err)) return;
    errorEl.textContent = err.message;
    errorEl.hidden = false;
  }
  try {
    await reload();
  } catch (err) {
    ctx.fail(err);
  }
}
