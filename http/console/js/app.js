// The console's entry point: a hash router over the pages.
//
// Routes: #/overview (default), #/sagas?FILTER, #/sagas/ID, #/dead-letters,
// #/definitions, #/bulk?FILTER. Each page module exports render(ctx), which fills
// ctx.body and calls ctx.ready() once its data is on screen, or throws. <main id="page">
// carries data-page and data-state (loading, ready, error) for the browser tests.
//
// A route change aborts the previous page's signal: its fetches stop, its timers and
// listeners go, and nothing it still finishes reaches the screen.

import { $, h, isAbort, setErrorReporter } from './dom.js';
import { forgetToken } from './api.js';
import * as overview from './overview.js';
import * as sagas from './sagas.js';
import * as saga from './saga.js';
import * as deadLetters from './dead-letters.js';
import * as definitions from './definitions.js';
import * as bulk from './bulk.js';

const PAGES = {
  overview: { module: overview, title: 'Overview', nav: 'overview' },
  sagas: { module: sagas, title: 'Sagas', nav: 'sagas' },
  saga: { module: saga, title: 'Saga', nav: 'sagas' },
  'dead-letters': { module: deadLetters, title: 'Dead letters', nav: 'dead-letters' },
  definitions: { module: definitions, title: 'Definitions', nav: 'definitions' },
  bulk: { module: bulk, title: 'Bulk', nav: 'bulk' },
};

// The hash as {page, id, params}; null for a route there is not.
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  const [first, ...rest] = path.split('/');
  if (first === 'sagas' && rest.length && rest.join('/')) {
    return { page: 'saga', id: decodeURIComponent(rest.join('/')), params };
  }
  const page = first || 'overview';
  // #/saga is no route of its own: a saga is #/sagas/ID.
  if ((rest.length && rest.join('')) || page === 'saga' || !Object.hasOwn(PAGES, page)) return null;
  return { page, params };
}

let current = null; // the AbortController of the page on screen
let shownAny = false; // whether a page was shown before

function render() {
  if (current) current.abort();
  let route;
  try {
    route = parseHash();
  } catch {
    route = undefined; // a malformed percent-encoding in the id
  }
  if (!route) {
    history.replaceState(null, '', '#/overview');
    route = { page: 'overview', params: new URLSearchParams() };
  }
  const controller = new AbortController();
  current = controller;
  const { signal } = controller;
  const page = PAGES[route.page];
  const main = $('#page');
  const pageChanged = main.dataset.page !== route.page;

  const message = h('p', { id: 'page-error' });
  const errorBox = h('div', { class: 'page-error', role: 'alert', hidden: true },
    message,
    h('button', { type: 'button', id: 'page-retry', onclick: render }, 'Try again'));
  const body = h('div', { class: 'page-body' });
  main.dataset.page = route.page;
  main.dataset.state = 'loading';
  main.replaceChildren(errorBox, body);

  const ctx = {
    page: route.page,
    id: route.id,
    params: route.params,
    body,
    signal,
    loading() {
      if (!signal.aborted) main.dataset.state = 'loading';
    },
    ready() {
      if (signal.aborted) return;
      errorBox.hidden = true;
      main.dataset.state = 'ready';
    },
    fail(err) {
      if (signal.aborted || isAbort(err)) return;
      message.textContent = (err && err.message) || String(err);
      errorBox.hidden = false;
      main.dataset.state = 'error';
    },
    // Go to a hash; the same hash again renders the page again (a form sent twice).
    // The page is marked loading at once, not at the 'hashchange' a task later, so
    // whoever waits for "ready" waits for the new page.
    go(hash) {
      if (location.hash === hash) {
        render();
      } else {
        main.dataset.state = 'loading';
        location.hash = hash;
      }
    },
  };

  document.title = `${route.id ? `${page.title} ${route.id}` : page.title} · sagalog`;
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === page.nav) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  // After a move to another page (from the nav, or a link that went with the old page),
  // keyboard focus starts at the new page's top. Not on the first page shown.
  const focus = document.activeElement;
  if (pageChanged && shownAny && (!focus || focus === document.body || focus.closest('nav'))) main.focus();
  shownAny = true;

  Promise.resolve()
    .then(() => page.module.render(ctx))
    .catch((err) => ctx.fail(err));
}

// An error from an event handler that nothing else caught: shown in the page.
setErrorReporter((err) => {
  if (isAbort(err)) return;
  const message = $('#page-error');
  if (!message) return;
  message.textContent = (err && err.message) || String(err);
  message.parentElement.hidden = false;
  $('#page').dataset.state = 'error';
});

function start() {
  $('#forget-token').addEventListener('click', () => {
    forgetToken();
    const note = $('#token-status');
    note.textContent = 'Admin token forgotten.';
    setTimeout(() => { note.textContent = ''; }, 4000);
  });
  // A link to another route marks the page loading within the click, as ctx.go does.
  document.addEventListener('click', (event) => {
    const link = event.target.closest && event.target.closest('a[href^="#/"]');
    if (link && link.getAttribute('href') !== location.hash && !event.defaultPrevented) $('#page').dataset.state = 'loading';
  });
  window.addEventListener('hashchange', render);
  render();
}

start();
