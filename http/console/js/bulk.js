// Bulk: retry or override every saga a filter matches, a hundred per call
// (POST /internal/v1/sagas/bulk/{retry,override}), following next_cursor to the end.
//
// The filter holds at toDate: the sagas as they were then. When the operator leaves it
// empty, the run takes the server's `now` (GET /api/v1/stats) once, at the start, and
// sends that same toDate on every call, so a saga changed by the run itself is not met
// again and no call acts twice. A run makes at most MAX_CALLS calls; "Go on" resumes
// a run that stopped, from its cursor, with its toDate.

import { authed, get } from './api.js';
import { badge, fill, h, isAbort, plural, sagaLink } from './dom.js';
import { confirmCall } from './confirm.js';
import { filterFields, filterParams, formFilter, queryString, readFilter } from './filter.js';

const MAX_PER_CALL = 100; // the server's bound per call; `limit` in the hash sets fewer
const MAX_CALLS = 100;
const OVERRIDES = ['COMPLETED', 'COMPENSATED', 'FAILED'];

export async function render(ctx) {
  const { signal } = ctx;
  const asked = Number(ctx.params.get('limit'));
  const perCall = Number.isInteger(asked) && asked >= 1 && asked <= MAX_PER_CALL ? asked : MAX_PER_CALL;
  const action = h('select', { id: 'bulk-action', name: 'action' },
    h('option', { value: 'retry' }, 'Retry the pending command'),
    h('option', { value: 'override' }, 'Override the status'));
  const status = h('select', { id: 'bulk-status', name: 'bulk_status' }, OVERRIDES.map((s) => h('option', { value: s }, s)));
  const reason = h('textarea', { id: 'bulk-reason', name: 'reason', rows: '2', maxlength: '4096', placeholder: 'Why, for the record' });
  const overrideFields = h('div', { class: 'field-row' },
    h('div', { class: 'field' }, h('label', { for: 'bulk-status' }, 'New status'), status),
    h('div', { class: 'field grow' }, h('label', { for: 'bulk-reason' }, 'Reason (required)'), reason));
  const showOverride = () => {
    overrideFields.hidden = action.value !== 'override';
    reason.required = action.value === 'override';
  };
  action.addEventListener('change', showOverride);
  showOverride();

  const start = h('button', { type: 'submit', id: 'bulk-start', class: 'primary' }, 'Start…');
  const stop = h('button', { type: 'button', id: 'bulk-stop', hidden: true }, 'Stop');
  const resume = h('button', { type: 'button', id: 'bulk-continue', hidden: true }, 'Go on');
  const fields = h('fieldset', { class: 'plain' },
    h('legend', { class: 'sub' }, 'Sagas'),
    h('div', { class: 'filter' }, filterFields('b', readFilter(ctx.params))),
    h('div', { class: 'field-row' }, h('div', { class: 'field' }, h('label', { for: 'bulk-action' }, 'Action'), action)),
    overrideFields);
  const form = h('form', { id: 'bulk-filter', 'aria-label': 'Bulk action' },
    fields,
    h('div', { class: 'actions' }, start, stop, resume));

  const error = h('p', { id: 'bulk-error', class: 'error', role: 'alert', hidden: true });
  const progress = h('p', { id: 'bulk-progress', role: 'status' });
  const summary = h('p', { id: 'bulk-summary', class: 'summary' });
  const tbody = h('tbody');
  const results = h('div', { class: 'table-wrap', hidden: true },
    h('table', { id: 'bulk-results' },
      h('thead', null, h('tr', null, ['Saga', 'Outcome', 'Status after', 'Error'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody));
  // Shown from the first run on.
  const report = h('section', { class: 'card', hidden: true }, h('h2', null, 'Progress'), error, progress, summary, results);

  ctx.body.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Bulk actions')),
    h('p', { class: 'muted' },
      `Acts on every saga the filter matches, ${perCall} per call, until none is left. `
      + `One run handles at most ${(perCall * MAX_CALLS).toLocaleString('en')} sagas (${MAX_CALLS} calls); `
      + '"Go on" resumes from there. The filter applies to the sagas as they were at "Updated until" '
      + '(the server\u2019s time at the start when left empty). Leaving this page stops the run.'),
    h('section', { class: 'card' }, form),
    report);

  let run = null; // the run on screen: {kind, query, body, cursor, processed, counts}
  let stopping = false;

  // While a run goes, the form is locked and Stop is offered; after, "Go on" is offered
  // when the run can resume: it stopped before the end, or a call failed (a failed call
  // left the cursor where it was, so going on makes that call again).
  function setRunning(running, canResume = false) {
    fields.disabled = running;
    start.disabled = running;
    stop.hidden = !running;
    stop.disabled = false;
    stop.textContent = 'Stop';
    resume.hidden = running || !canResume;
  }

  const outcomeText = (r) => {
    const counts = { ...r.counts };
    const main = r.kind === 'retry' ? ['retried', 'rejected'] : ['overridden', 'rejected'];
    const parts = main.map((k) => `${counts[k] || 0} ${k}`);
    for (const [k, n] of Object.entries(counts)) if (!main.includes(k)) parts.push(`${n} ${k}`);
    return `${r.processed} processed: ${parts.join(', ')}`;
  };

  async function go() {
    error.hidden = true;
    summary.textContent = '';
    stopping = false;
    setRunning(true);
    stop.focus(); // Start is locked now; keep the keyboard on the control that acts
    ctx.loading();
    let calls = 0;
    let ended = 'done';
    try {
      do {
        const query = new URLSearchParams(run.query);
        if (run.cursor) query.set('cursor', run.cursor);
        const page = await authed('POST', `/internal/v1/sagas/bulk/${run.kind}?${query}`, { body: run.body, signal });
        calls += 1;
        for (const item of page.items || []) {
          run.processed += 1;
          run.counts[item.outcome] = (run.counts[item.outcome] || 0) + 1;
          tbody.append(h('tr', { dataset: { sagaId: item.saga_id, outcome: item.outcome } },
            h('td', { class: 'saga-id' }, sagaLink(item.saga_id)),
            h('td', { class: 'outcome' }, badge(item.outcome)),
            h('td', { class: 'status' }, badge(item.status)),
            h('td', { class: 'error-message', title: item.error ? item.error.code : null }, item.error ? item.error.message : h('span', { class: 'muted' }, '—'))));
        }
        results.hidden = run.processed === 0;
        run.cursor = page.next_cursor || null;
        progress.textContent = `${outcomeText(run)} (call ${calls}${run.cursor ? ', going on' : ''})`;
        if (run.cursor && stopping) ended = 'stopped';
        else if (run.cursor && calls >= MAX_CALLS) ended = 'bound';
      } while (run.cursor && ended === 'done');
    } catch (err) {
      if (isAbort(err)) return;
      ended = 'error';
      error.textContent = err.message;
      error.hidden = false;
    }
    const text = outcomeText(run);
    summary.textContent = {
      done: text,
      stopped: `${text}. Stopped before the end; "Go on" resumes.`,
      bound: `${text}. Stopped at ${(perCall * MAX_CALLS).toLocaleString('en')} sagas in this run; "Go on" resumes.`,
      error: `${text}. Stopped by the error above; "Go on" makes the failed call again.`,
    }[ended];
    progress.textContent = `${text} (${plural(calls, 'call')})`;
    const hadFocus = document.activeElement === stop || document.activeElement === document.body;
    setRunning(false, Boolean(run.cursor) || ended === 'error');
    if (hadFocus) (resume.hidden ? start : resume).focus();
    ctx.ready();
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (start.disabled || !form.reportValidity()) return;
    // Locked while the server's time is read and the call confirmed: one run at a time.
    start.disabled = true;
    try {
      await prepare();
    } finally {
      if (stop.hidden) start.disabled = false;
    }
  });

  // Reads the form, fixes toDate, confirms the first call, and runs.
  async function prepare() {
    const filter = formFilter(form);
    // Keep the filter in the hash for a reload, without rendering the page again.
    const shown = filterParams(filter);
    if (perCall !== MAX_PER_CALL) shown.set('limit', String(perCall));
    history.replaceState(null, '', `#/bulk${queryString(shown)}`);
    const kind = action.value;
    const body = kind === 'override' ? { status: status.value, reason: reason.value.trim() } : {};
    if (kind === 'override' && !body.reason) {
      reason.focus();
      return;
    }
    error.hidden = true;
    let toDate = filter.toDate;
    if (!toDate) {
      try {
        toDate = (await get('/api/v1/stats', { signal })).now;
      } catch (err) {
        if (isAbort(err)) return;
        error.textContent = `The server's time could not be read: ${err.message}`;
        error.hidden = false;
        report.hidden = false;
        return;
      }
    }
    const query = filterParams({ ...filter, toDate });
    query.set('limit', String(perCall));
    const url = `/internal/v1/sagas/bulk/${kind}?${query}`;
    const ok = await confirmCall({
      title: kind === 'retry' ? 'Retry these sagas' : 'Override these sagas',
      okLabel: 'Start',
      fields: [h('p', null, `Repeated with cursor=next_cursor until next_cursor is null, at most ${MAX_CALLS} calls. `
        + `toDate ${toDate} holds for every call.`)],
      describe: () => ({ call: kind === 'override' ? `POST ${url}\n${JSON.stringify(body)}` : `POST ${url}` }),
    });
    if (!ok) return;
    report.hidden = false;
    fill(tbody);
    results.hidden = true;
    progress.textContent = '0 processed';
    run = { kind, query: query.toString(), body, cursor: null, processed: 0, counts: {} };
    await go();
  }

  stop.addEventListener('click', () => {
    stopping = true;
    stop.disabled = true;
    stop.textContent = 'Stopping after this call…';
  });
  resume.addEventListener('click', () => go());

  ctx.ready();
}
