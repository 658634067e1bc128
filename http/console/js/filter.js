// The saga filter, shared by the Sagas and Bulk pages: its form, and its conversion to
// and from a query string. The hash's query and the API's query are the same string
// (status, type, fromDate, toDate, id_prefix, payload.KEY=VALUE), so a filter survives
// a reload and the Bulk page acts on exactly the sagas the list showed.

import { h } from './dom.js';

// The lifecycle's statuses, in its order (FAILED: compensations are being issued).
export const STATUSES = ['STARTED', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'COMPENSATED', 'COMPENSATION_FAILED'];

const PLAIN = ['status', 'type', 'fromDate', 'toDate', 'id_prefix'];
const PAYLOAD = 'payload.';

// {status, type, fromDate, toDate, id_prefix, payload_key, payload_value} from a query
// (URLSearchParams); '' for each field not there. The first payload.* fills the form's
// row; any others are kept in `payload_more`.
export function readFilter(params) {
  const filter = { payload_key: '', payload_value: '', payload_more: [] };
  for (const name of PLAIN) filter[name] = params.get(name) || '';
  for (const [key, value] of params) {
    if (key.startsWith(PAYLOAD) && key.length > PAYLOAD.length) {
      if (!filter.payload_key) {
        filter.payload_key = key.slice(PAYLOAD.length);
        filter.payload_value = value;
      } else {
        // More payload fields than the form has rows (a shared link, the API's own
        // query): kept, shown, and sent, so the filter never silently widens.
        filter.payload_more.push([key.slice(PAYLOAD.length), value]);
      }
    }
  }
  return filter;
}

// The filter as URLSearchParams, leaving out the empty fields.
export function filterParams(filter) {
  const params = new URLSearchParams();
  for (const name of PLAIN) if (filter[name]) params.set(name, filter[name]);
  if (filter.payload_key) params.set(PAYLOAD + filter.payload_key, filter.payload_value);
  for (const [key, value] of filter.payload_more || []) params.append(PAYLOAD + key, value);
  return params;
}

// "?a=b" or "" when there is nothing.
export function queryString(params) {
  const text = params.toString();
  return text ? `?${text}` : '';
}

const pad = (n) => String(n).padStart(2, '0');

// RFC 3339 to a datetime-local value, in the browser's time zone.
function toLocal(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
    + `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A datetime-local value (local time) to RFC 3339 in UTC, without ".000".
function fromLocal(value) {
  const d = new Date(value); // a date-time without an offset is local time
  if (!value || Number.isNaN(d.getTime())) return '';
  return d.toISOString().replace('.000Z', 'Z');
}

function field(id, label, control, hint) {
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    control,
    hint ? h('small', { class: 'hint' }, hint) : null);
}

function dateInput(id, name, iso) {
  const input = h('input', { id, name, type: 'datetime-local', step: '1', value: toLocal(iso) });
  // The input shows whole seconds; keep the exact time from the hash while it is unchanged.
  input.dataset.iso = iso;
  input.dataset.shown = input.value;
  return input;
}

// The filter's fields, prefilled with `filter`; ids are `${prefix}-${name}`.
export function filterFields(prefix, filter) {
  const id = (name) => `${prefix}-${name}`;
  const status = h('select', { id: id('status'), name: 'status', value: filter.status },
    h('option', { value: '' }, 'Any status'),
    STATUSES.map((s) => h('option', { value: s }, s)),
    // A status from the hash this list does not know stays selectable.
    filter.status && !STATUSES.includes(filter.status) ? h('option', { value: filter.status }, filter.status) : null);
  const text = (name, placeholder) =>
    h('input', { id: id(name), name, type: 'text', value: filter[name], placeholder, autocomplete: 'off', spellcheck: 'false' });
  const key = text('payload_key', 'e.g. order_id');
  const value = text('payload_value', 'e.g. ORD-1');
  // A payload value needs the field it is about.
  const checkPayload = () => key.setCustomValidity(
    value.value && !key.value.trim() ? 'Name the payload field this value is for.' : '');
  key.addEventListener('input', checkPayload);
  value.addEventListener('input', checkPayload);
  return [
    field(id('status'), 'Status', status),
    field(id('type'), 'Type', text('type', 'e.g. order')),
    field(id('id_prefix'), 'Saga id starts with', text('id_prefix', 'e.g. ORD-')),
    field(id('fromDate'), 'Updated from', dateInput(id('fromDate'), 'fromDate', filter.fromDate), 'local time'),
    field(id('toDate'), 'Updated until', dateInput(id('toDate'), 'toDate', filter.toDate), 'local time'),
    h('div', { class: 'field pair' },
      field(id('payload_key'), 'Payload field', key),
      field(id('payload_value'), 'equals', value)),
    more(id('payload_more'), filter.payload_more || []),
  ];
}

// The payload fields past the first, from the address: listed, and kept in a hidden
// input so that the form sends them on.
function more(id, fields) {
  if (!fields.length) return null;
  return h('div', { class: 'field more', id },
    h('p', { class: 'hint' }, 'Also: ', fields.map(([k, v]) => `payload.${k} = ${v}`).join(', ')),
    h('input', { type: 'hidden', name: 'payload_more', value: JSON.stringify(fields) }));
}

// The filter a form's fields hold now.
export function formFilter(form) {
  const filter = {};
  for (const name of ['status', 'type', 'id_prefix', 'payload_key', 'payload_value']) {
    const value = form.elements[name].value;
    filter[name] = name === 'payload_value' ? value : value.trim();
  }
  for (const name of ['fromDate', 'toDate']) {
    const input = form.elements[name];
    filter[name] = input.value && input.value === input.dataset.shown ? input.dataset.iso : fromLocal(input.value);
  }
  const kept = form.elements.payload_more;
  filter.payload_more = kept ? JSON.parse(kept.value) : [];
  return filter;
}
