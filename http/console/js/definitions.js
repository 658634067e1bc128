// Definitions: every registered definition version, grouped by name with the newest
// version first, its steps drawn as a flow (GET /api/v1/definitions, up to 10 pages);
// and a form to register a version (PUT /api/v1/definitions/NAME, admin token).

import { authed, get } from './api.js';
import { actThenReload, duration, fill, h, plural } from './dom.js';
import { confirmCall } from './confirm.js';

const PAGE_SIZE = 100;
const MAX_PAGES = 10;

export async function render(ctx) {
  const { signal } = ctx;
  const content = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  ctx.body.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Definitions')),
    h('p', { class: 'legend' },
      h('span', { class: 'key-step' }, 'step'), ' runs in order, left to right; ',
      h('span', { class: 'key-step compensable' }, h('span', { class: 'mark' }, '↺ compensable')),
      ' is undone, in reverse order, when a later step fails for good.'),
    registerForm(ctx, () => load()),
    content);

  async function load() {
    const items = [];
    let cursor = null;
    let pages = 0;
    do {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (cursor) query.set('cursor', cursor);
      const page = await get(`/api/v1/definitions?${query}`, { signal });
      items.push(...(page.items || []));
      cursor = page.next_cursor;
      pages += 1;
    } while (cursor && pages < MAX_PAGES);

    const groups = new Map();
    for (const d of items) {
      if (!groups.has(d.name)) groups.set(d.name, []);
      groups.get(d.name).push(d);
    }
    fill(content,
      items.length ? null : h('p', { id: 'empty', class: 'empty' }, 'No definition is registered yet.'),
      cursor ? h('p', { class: 'warn' }, `Showing the first ${items.length} versions; more are registered.`) : null,
      [...groups].map(([name, versions]) => {
        versions.sort((a, b) => b.version - a.version);
        return h('section', { class: 'definition-group card' },
          h('h2', null, h('span', { class: 'mono' }, name), ' ',
            h('a', { class: 'small-link', href: `#/sagas?type=${encodeURIComponent(name)}` }, 'its sagas')),
          versions.map((d, i) => definition(d, i === 0)));
      }));
    ctx.ready();
  }

  await load();
}

function definition(d, latest) {
  const steps = d.steps || [];
  return h('section', { class: 'definition', dataset: { name: d.name, version: d.version } },
    h('h3', null, `version ${d.version}`, latest ? h('span', { class: 'tag' }, 'latest') : null,
      h('span', { class: 'muted' }, ` · ${plural(steps.length, 'step')}`)),
    h('ol', { class: 'flow', 'aria-label': `Steps of ${d.name} version ${d.version}` }, steps.map((s) =>
      h('li', { class: s.compensable ? 'step compensable' : 'step', dataset: { step: s.name } },
        h('strong', { class: 'mono' }, s.name),
        h('span', { class: 'topic mono', title: 'topic' }, s.topic),
        h('span', null, `timeout ${duration(s.timeout_ms)}`),
        h('span', null, `${plural(s.max_attempts, 'attempt')}, backoff ${duration(s.backoff_ms)}`),
        s.compensable ? h('span', { class: 'mark' }, '↺ compensable') : null))));
}

const EXAMPLE = JSON.stringify({
  name: 'order',
  version: 2,
  steps: [{ name: 'reserve_inventory', topic: 'inventory.commands', compensable: true, timeout_ms: 30000, max_attempts: 3, backoff_ms: 200 }],
}, null, 2);

// Register a definition version from its JSON.
function registerForm(ctx, reload) {
  const text = h('textarea', { id: 'definition-json', rows: '10', spellcheck: 'false', class: 'mono', placeholder: EXAMPLE });
  const note = h('p', { id: 'action-error', class: 'error', role: 'alert', hidden: true });
  const done = h('p', { id: 'register-result', role: 'status' });
  const form = h('form', { id: 'register-form' },
    h('div', { class: 'field' }, h('label', { for: 'definition-json' }, 'Definition as JSON (name, version, steps)'), text),
    note, done,
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'register-definition', class: 'primary' }, 'Register…')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    note.hidden = true;
    done.textContent = '';
    let body;
    try {
      body = JSON.parse(text.value);
    } catch (err) {
      note.textContent = `That is not JSON: ${err.message}`;
      note.hidden = false;
      return;
    }
    if (!body || typeof body.name !== 'string' || !body.name) {
      note.textContent = 'The definition needs a "name".';
      note.hidden = false;
      return;
    }
    const url = `/api/v1/definitions/${encodeURIComponent(body.name)}`;
    const ok = await confirmCall({
      title: `Register ${body.name}`,
      okLabel: 'Register',
      describe: () => ({ call: `PUT ${url}\n${JSON.stringify(body)}` }),
    });
    if (!ok) return;
    await actThenReload(ctx, async () => {
      const answer = await authed('PUT', url, { body, signal: ctx.signal });
      done.textContent = answer.registered
        ? `Registered ${answer.name} version ${answer.version}.`
        : `${answer.name} version ${answer.version} was registered already, the same.`;
    }, note, reload);
  });
  return h('details', { class: 'card register' }, h('summary', null, 'Register a definition version'), form);
}
