// One saga: its state (GET /api/v1/sagas/ID), its steps, and its history as a timeline
// (GET /api/v1/sagas/ID/history), with the operator's two writes: retry the pending
// command, and override the status with a reason. Both go through #confirm.

import { authed, get } from './api.js';
import { actThenReload, badge, duration, fill, h, json, table, time } from './dom.js';
import { confirmCall } from './confirm.js';

const OVERRIDES = ['COMPLETED', 'COMPENSATED', 'FAILED'];
// A field whose JSON is longer than this starts collapsed.
const SHORT_JSON = 80;

export async function render(ctx) {
  const { id, signal } = ctx;
  // The id as a path segment. `/internal/v1/sagas/bulk/retry` is the bulk action's
  // route, so a saga named `bulk` is written `%62ulk` (the server decodes it back).
  const path = id === 'bulk' ? '%62ulk' : encodeURIComponent(id);
  const hiddenKinds = new Set(); // kept across reloads after an action

  const actionError = h('p', { id: 'action-error', class: 'error', role: 'alert', hidden: true });
  const status = h('span', { id: 'saga-status', class: 'badge' });
  const content = h('div', null);
  const retry = h('button', { type: 'button', id: 'retry' }, 'Retry…');
  const override = h('button', { type: 'button', id: 'override' }, 'Override status…');
  const actions = h('div', { class: 'actions' }, retry, override);
  ctx.body.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/sagas' }, '« Sagas')),
    h('div', { class: 'page-head' },
      h('h1', null, 'Saga ', h('span', { id: 'saga-id', class: 'mono' }, id), ' ', status),
      actions),
    actionError,
    content);

  async function load() {
    // One after the other: an unknown saga is one 404, not two.
    const saga = await get(`/api/v1/sagas/${path}`, { signal });
    const history = await get(`/api/v1/sagas/${path}/history`, { signal });
    status.textContent = saga.status;
    status.className = badge(saga.status).className;
    fill(content, summary(saga), steps(saga), timeline(history.items || [], hiddenKinds));
    ctx.ready();
  }

  // Runs an action's call, then shows the saga as it is now (or the call's error).
  const act = (call) => actThenReload(ctx, call, actionError, load);

  retry.addEventListener('click', async () => {
    const url = `/internal/v1/sagas/${path}/retry`;
    const ok = await confirmCall({
      title: 'Retry this saga',
      okLabel: 'Retry',
      fields: [h('p', null, 'Re-issues the pending command (a step or a compensation) with a fresh attempt budget.')],
      describe: () => ({ call: `POST ${url}` }),
    });
    if (ok) await act(() => authed('POST', url, { signal }));
  });

  override.addEventListener('click', async () => {
    const url = `/internal/v1/sagas/${path}/status`;
    const select = h('select', { id: 'override-status' }, OVERRIDES.map((s) => h('option', { value: s }, s)));
    const reason = h('textarea', { id: 'override-reason', rows: '3', maxlength: '4096', required: true, placeholder: 'Why, for the record' });
    const body = () => ({ status: select.value, reason: reason.value.trim() });
    const ok = await confirmCall({
      title: 'Override the status',
      okLabel: 'Override',
      fields: [
        h('p', null, 'Sets the saga\u2019s status by hand; the reason is recorded in its history.'),
        h('div', { class: 'field' }, h('label', { for: 'override-status' }, 'New status'), select),
        h('div', { class: 'field' }, h('label', { for: 'override-reason' }, 'Reason (required)'), reason),
      ],
      describe: () => ({ call: `PATCH ${url}\n${JSON.stringify(body())}`, ok: body().reason !== '' }),
    });
    if (ok) {
      const sent = body();
      await act(() => authed('PATCH', url, { body: sent, signal }));
    }
  });

  try {
    await load();
  } catch (err) {
    actions.hidden = true; // nothing to act on: the saga is unknown or could not be read
    throw err;
  }
}

function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([term, value, attrs]) =>
    h('div', null, h('dt', null, term), h('dd', attrs, value))));
}

function summary(s) {
  const failed = s.failure_reason != null || s.failed_step != null || s.failed_at != null;
  return h('section', { class: 'card' },
    h('h2', null, 'Summary'),
    dl([
      ['Type', s.type, { id: 'saga-type' }],
      ['Definition version', String(s.definition_version ?? '—')],
      ['Current step', s.current_step ?? '—', { class: 'mono' }],
      ['Created', time(s.created_at, { ms: true })],
      ['Updated', time(s.updated_at, { ms: true })],
      ['Trace id', s.trace_id ?? '—', { id: 'trace-id', class: 'mono' }],
      failed && ['Failure reason', s.failure_reason ?? '—', { id: 'failure-reason', class: 'error-text' }],
      failed && ['Failed step', s.failed_step ?? '—', { id: 'failed-step', class: 'mono' }],
      failed && ['Failed at', time(s.failed_at, { ms: true }), { id: 'failed-at' }],
    ]),
    h('h3', null, 'Payload'),
    h('pre', { id: 'saga-payload', class: 'json' }, json(s.payload)));
}

function steps(s) {
  const rows = (s.steps || []).map((step) => h('tr', {
    dataset: { step: step.name }, class: step.name === s.current_step ? 'current' : null,
  },
  h('td', { class: 'name mono' }, step.name),
  h('td', { class: 'status' }, badge(step.status)),
  h('td', { class: 'attempts' }, String(step.attempts)),
  h('td', { class: 'result' }, step.result == null ? '—' : h('code', { class: 'json' }, JSON.stringify(step.result)))));
  return h('section', { class: 'card' },
    h('h2', null, 'Steps'),
    table({ id: 'steps' }, ['Step', 'Status', 'Attempts', 'Result'], rows));
}

// The fields shown first, in this order; the rest follow as the record has them.
const LEAD = ['step', 'attempt', 'action', 'reason', 'from', 'to'];
const HEAD = new Set(['offset', 'seq', 'kind', 'at']);

// A record's field: a string as text, anything else as JSON, folded when long.
function value(v) {
  if (typeof v === 'string') return h('span', null, v);
  const compact = JSON.stringify(v);
  if (compact.length <= SHORT_JSON) return h('code', { class: 'json' }, compact);
  return h('details', null,
    h('summary', null, `${compact.slice(0, SHORT_JSON - 1)}…`),
    h('pre', { class: 'json' }, JSON.stringify(v, null, 2)));
}

function record(r, previousAt) {
  const keys = [...LEAD.filter((k) => k in r), ...Object.keys(r).filter((k) => !HEAD.has(k) && !LEAD.includes(k))];
  const at = Date.parse(r.at);
  const delta = previousAt == null || Number.isNaN(at) ? 'start' : `+${duration(at - previousAt)}`;
  return h('li', { dataset: { offset: r.offset, kind: r.kind }, class: `kind-${String(r.kind).replace(/[^a-z0-9_]/g, '')}` },
    h('div', { class: 'tl-head' },
      h('span', { class: 'kind' }, r.kind),
      time(r.at, { ms: true }),
      h('span', { class: 'delta' }, delta),
      h('span', { class: 'offset muted' }, `offset ${r.offset} · seq ${r.seq}`)),
    keys.length ? h('dl', { class: 'tl-fields' }, keys.map((k) =>
      h('div', { dataset: { field: k } }, h('dt', null, k), h('dd', null, value(r[k]))))) : null);
}

function timeline(items, hiddenKinds) {
  const kinds = [...new Set(items.map((r) => r.kind))];
  let previousAt = null;
  const list = h('ol', { id: 'timeline', class: 'timeline' }, items.map((r) => {
    const li = record(r, previousAt);
    const at = Date.parse(r.at);
    if (!Number.isNaN(at)) previousAt = at;
    li.hidden = hiddenKinds.has(r.kind);
    return li;
  }));
  const toggle = (event) => {
    const kind = event.target.value;
    if (event.target.checked) hiddenKinds.delete(kind);
    else hiddenKinds.add(kind);
    for (const li of list.children) li.hidden = hiddenKinds.has(li.dataset.kind);
  };
  const filter = h('fieldset', { id: 'kind-filter', class: 'kinds' },
    h('legend', null, 'Show records of kind'),
    kinds.map((kind, i) => h('label', { for: `kind-${i}`, class: 'check' },
      h('input', { type: 'checkbox', id: `kind-${i}`, value: kind, checked: !hiddenKinds.has(kind), onchange: toggle }),
      ` ${kind}`)));
  return h('section', { class: 'card' },
    h('h2', null, `History (${items.length} records, oldest first)`),
    filter,
    list);
}
