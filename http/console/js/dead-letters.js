// Dead letters: the commands the Kafka relay could not publish, oldest first
// (GET /internal/v1/outbox/dead-letters, which needs the admin token), each with a
// replay through #confirm. The page's position (`after`) lives in the hash.

import { authed } from './api.js';
import { actThenReload, fill, h, sagaLink, table } from './dom.js';
import { confirmCall } from './confirm.js';
import { queryString } from './filter.js';

const PAGE_SIZE = 100; // the API's default limit

export async function render(ctx) {
  const { signal } = ctx;
  const after = ctx.params.get('after');
  const actionError = h('p', { id: 'action-error', class: 'error', role: 'alert', hidden: true });
  const content = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  ctx.body.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Dead letters')),
    h('p', { class: 'muted' }, 'A replay publishes the command again, with its event_id, so a participant that saw it before drops the copy.'),
    actionError,
    content);

  async function replay(letter) {
    const url = `/internal/v1/outbox/dead-letters/${encodeURIComponent(letter.offset)}/replay?partition=${encodeURIComponent(letter.partition)}`;
    const ok = await confirmCall({
      title: `Replay dead letter ${letter.offset}`,
      okLabel: 'Replay',
      describe: () => ({ call: `POST ${url}` }),
    });
    if (!ok) return;
    await actThenReload(ctx, () => authed('POST', url, { signal }), actionError, load);
  }

  async function load() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (after) query.set('after', after);
    const page = await authed('GET', `/internal/v1/outbox/dead-letters?${query}`, { signal });
    const items = page.items || [];
    const rows = items.map((d) => {
      const command = d.command || {};
      return h('tr', { dataset: { offset: d.offset } },
        h('td', { class: 'offset num' }, String(d.offset)),
        h('td', { class: 'saga-id' }, sagaLink(d.saga_id)),
        h('td', { class: 'step mono' }, command.step ?? '—'),
        h('td', { class: 'action' }, command.action ?? '—'),
        h('td', { class: 'reason' }, d.reason ?? ''),
        h('td', { class: 'replayed num' }, d.replayed_at_offset == null ? '—' : String(d.replayed_at_offset)),
        h('td', null, d.replayed_at_offset == null
          ? h('button', { type: 'button', class: 'replay small', 'aria-label': `Replay dead letter ${d.offset}`, onclick: () => replay(d) }, 'Replay…')
          : null));
    });
    // next_after is the last offset looked at, so it is set on the last page too:
    // only a full page can have more after it.
    const more = page.next_after != null && items.length >= PAGE_SIZE;
    const hashFor = (next) => `#/dead-letters${queryString(new URLSearchParams(next == null ? {} : { after: String(next) }))}`;
    fill(content,
      items.length
        ? table({ id: 'dead-letters' }, ['Offset', 'Saga', 'Step', 'Action', 'Reason', 'Replayed at', ''], rows)
        : h('p', { id: 'empty', class: 'empty' }, after ? 'No more dead letters.' : 'No dead letters: every command was published.'),
      h('nav', { class: 'pager', 'aria-label': 'Pages' },
        h('button', { type: 'button', id: 'first-page', disabled: !after, hidden: !after, onclick: () => ctx.go(hashFor(null)) }, '« First page'),
        h('button', { type: 'button', id: 'next-page', disabled: !more, hidden: !more, onclick: () => ctx.go(hashFor(page.next_after)) }, 'Next page »')));
    ctx.ready();
  }

  await load();
}
