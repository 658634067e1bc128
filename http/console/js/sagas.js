// Sagas: the filtered list, newest first, a page at a time (GET /api/v1/sagas). The
// filter and the page's cursor live in the hash, so a reload or a shared link shows the
// same page; the browser's Back goes to the page before.

import { get } from './api.js';
import { badge, fill, h, sagaLink, table, time } from './dom.js';
import { filterFields, filterParams, formFilter, queryString, readFilter } from './filter.js';

const PAGE_SIZE = 100; // the API's default limit; `limit` in the hash sets another
const MAX_PAGE_SIZE = 1000; // the API's largest
const FOLLOW_EMPTY_MS = 3000; // how long empty pages are followed before one is shown

export async function render(ctx) {
  const filter = readFilter(ctx.params);
  let cursor = ctx.params.get('cursor');
  const asked = Number(ctx.params.get('limit'));
  const limit = Number.isInteger(asked) && asked >= 1 && asked <= MAX_PAGE_SIZE ? asked : PAGE_SIZE;
  const base = filterParams(filter);
  const hashFor = (next) => {
    const params = filterParams(filter);
    if (limit !== PAGE_SIZE) params.set('limit', String(limit));
    if (next) params.set('cursor', next);
    return `#/sagas${queryString(params)}`;
  };

  const form = h('form', { id: 'filter', class: 'filter', 'aria-label': 'Filter sagas' },
    filterFields('f', filter),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'apply-filter', class: 'primary' }, 'Apply'),
      h('button', { type: 'button', id: 'clear-filter', onclick: () => ctx.go('#/sagas') }, 'Clear')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (!form.reportValidity()) return;
    ctx.go(`#/sagas${queryString(filterParams(formFilter(form)))}`);
  });

  const results = h('div', { class: 'results' }, h('p', { class: 'muted' }, 'Loading…'));
  ctx.body.append(
    h('div', { class: 'page-head' },
      h('h1', null, 'Sagas'),
      h('a', { id: 'bulk-link', class: 'button', href: `#/bulk${queryString(base)}` }, 'Act on these sagas in bulk…')),
    form,
    results);

  const query = filterParams(filter);
  query.set('limit', String(limit));
  if (cursor) query.set('cursor', cursor);
  let page = await get(`/api/v1/sagas?${query}`, { signal: ctx.signal });
  // A selective filter can meet pages that end empty at the server's scan bound: go on
  // by itself past those, for a few seconds at most, before showing one.
  const until = Date.now() + FOLLOW_EMPTY_MS;
  while (!(page.items || []).length && page.next_cursor && Date.now() < until) {
    cursor = page.next_cursor;
    query.set('cursor', cursor);
    page = await get(`/api/v1/sagas?${query}`, { signal: ctx.signal });
  }
  // The page shown is the one reached: the address says so (a reload shows it again).
  if (cursor && cursor !== ctx.params.get('cursor')) history.replaceState(null, '', hashFor(cursor));
  const items = page.items || [];

  const rows = items.map((s) => h('tr', { dataset: { sagaId: s.saga_id } },
    h('td', { class: 'saga-id' }, sagaLink(s.saga_id)),
    h('td', { class: 'type' }, s.type),
    h('td', { class: 'status' }, badge(s.status)),
    h('td', { class: 'current-step mono' }, s.current_step ?? '—'),
    h('td', { class: 'updated' }, time(s.updated_at)),
    h('td', { class: 'failure' }, s.failure_reason ?? '')));

  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', id: 'first-page', disabled: !cursor, hidden: !cursor, onclick: () => ctx.go(hashFor(null)) }, '« First page'),
    h('button', { type: 'button', id: 'next-page', disabled: !page.next_cursor, hidden: !page.next_cursor, onclick: () => ctx.go(hashFor(page.next_cursor)) }, 'Next page »'));

  fill(results,
    items.length
      ? table({ id: 'saga-table' }, ['Saga', 'Type', 'Status', 'Current step', 'Updated', 'Failure'], rows)
      : h('p', { id: 'empty', class: 'empty' },
        // A page can come back short, or empty, and still go on (the server bounds each scan).
        page.next_cursor ? 'No sagas on this page; the next page may hold more.' : 'No sagas match this filter.'),
    h('p', { class: 'muted' }, `${items.length} shown${cursor ? ' on this page' : ''}, newest first.`),
    pager);
  ctx.ready();
}
