// Overview: sagas by status, starts and endings per second, the oldest active saga and
// the health of the log, from GET /api/v1/stats. Refreshed every 5 s while the tab is
// visible; a hidden tab makes no calls and catches up as soon as it is shown again.

import { get, noteTokenRequired } from './api.js';
import { badge, duration, fill, h, plural, sagaLink, share, svg, time } from './dom.js';
import { STATUSES } from './filter.js';

const REFRESH_MS = 5000;

export async function render(ctx) {
  const { signal } = ctx;
  const view = layout();
  ctx.body.append(view.root);

  let timer = null;
  let inFlight = false;
  const schedule = () => {
    clearTimeout(timer);
    timer = null;
    if (!document.hidden && !signal.aborted) timer = setTimeout(refresh, REFRESH_MS);
  };
  async function refresh() {
    timer = null;
    inFlight = true;
    try {
      const stats = await get('/api/v1/stats', { signal });
      noteTokenRequired(stats.admin_token_required);
      draw(view, stats);
      ctx.ready();
    } catch (err) {
      ctx.fail(err); // the last figures stay on screen under the error
    } finally {
      inFlight = false;
    }
    schedule();
  }
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
    } else if (!timer && !inFlight) {
      refresh();
    }
  }, { signal });
  signal.addEventListener('abort', () => clearTimeout(timer));
  await refresh();
}

function card(title, ...content) {
  return h('section', { class: 'card' }, h('h2', null, title), ...content);
}

// The page's fixed parts; draw() fills them in place, so focus and scroll survive a refresh.
function layout() {
  const v = {
    asOf: h('span', null, '…'),
    total: h('span', null, '…'),
    counts: h('div', { id: 'counts', class: 'counts' }),
    bar: h('div', { class: 'share-bar', 'aria-hidden': 'true' }),
    rates: svg('svg', { id: 'rates', class: 'chart', viewBox: '0 0 640 200', preserveAspectRatio: 'xMinYMin meet', role: 'img', 'aria-label': 'Starts and endings per second' }),
    ratesNote: h('p', { class: 'muted' }),
    oldest: h('div', { id: 'oldest' }),
    deadLetters: h('span', { id: 'dead-letter-count', class: 'big' }),
    deadWaiting: h('p', { class: 'muted' }),
    logHead: h('span', { id: 'log-head', class: 'big' }),
    logNote: h('p', { class: 'muted' }),
    snapshot: h('span', { id: 'snapshot-age', class: 'big' }),
    snapshotNote: h('p', { class: 'muted' }),
    delivery: h('p', { id: 'delivery' }),
  };
  v.root = h('div', null,
    h('div', { class: 'page-head' },
      h('h1', null, 'Overview'),
      h('p', { class: 'muted' }, v.total, ' · as of ', v.asOf, ' · refreshed every 5 s while this tab is shown')),
    card('Sagas by status', v.bar, v.counts),
    card('Starts and endings per second', v.rates,
      h('p', { class: 'legend' },
        h('span', { class: 'key started' }, 'started'), ' ', h('span', { class: 'key ended' }, 'ended')),
      v.ratesNote),
    h('div', { class: 'cards' },
      card('Oldest active saga', v.oldest),
      card('Dead letters', v.deadLetters, v.deadWaiting, h('a', { href: '#/dead-letters' }, 'See dead letters')),
      card('Log head', v.logHead, v.logNote),
      card('Last snapshot', v.snapshot, v.snapshotNote),
      card('Command delivery', v.delivery)));
  return v;
}

function draw(v, stats) {
  const statuses = stats.statuses || {};
  // The known statuses first, in lifecycle order, then any other the server counts.
  const names = [...STATUSES.filter((s) => s in statuses), ...Object.keys(statuses).filter((s) => !STATUSES.includes(s))];
  const total = names.reduce((sum, s) => sum + (Number(statuses[s]) || 0), 0);
  fill(v.asOf, time(stats.now));
  v.total.textContent = `${plural(total, 'saga')}, ${stats.active ?? 0} active`;

  fill(v.counts, ...names.map((s) => h('a', {
    class: `count-tile s-${s.toLowerCase()}`, href: `#/sagas?status=${encodeURIComponent(s)}`, dataset: { status: s },
  }, badge(s), h('span', { class: 'count' }, String(statuses[s])), h('span', { class: 'share' }, share(statuses[s], total)))));
  fill(v.bar, ...names.filter((s) => statuses[s] > 0).map((s) => {
    const part = h('span', { class: `s-${s.toLowerCase()}` });
    part.style.width = `${(statuses[s] / total) * 100}%`;
    return part;
  }));

  drawRates(v.rates, v.ratesNote, stats.rates || { interval_s: 10, buckets: [] });
  drawOldest(v.oldest, stats.oldest_active);

  const dl = stats.dead_letters || {};
  v.deadLetters.textContent = String(dl.total ?? 0);
  v.deadWaiting.textContent = `${dl.waiting ?? 0} waiting for a replay`;
  v.deadWaiting.classList.toggle('warn', dl.waiting > 0);

  const log = stats.log || {};
  v.logHead.textContent = String(log.head ?? 0);
  v.logNote.textContent = `first offset ${log.first ?? 0}, indexed to ${log.indexed ?? 0}`;

  const snap = stats.snapshot || {};
  v.snapshot.textContent = snap.age_s == null ? 'no snapshot yet' : `${duration(snap.age_s * 1000)} ago`;
  fill(v.snapshotNote, snap.at ? `at offset ${snap.offset}, ` : '', snap.at ? time(snap.at) : '');

  const delivery = stats.delivery || {};
  const paused = delivery.all || (delivery.topics || []).length > 0 || (delivery.paused_topics || []).length > 0;
  v.delivery.textContent = delivery.summary || 'unknown';
  v.delivery.classList.toggle('warn', Boolean(paused));
}

function drawOldest(el, oldest) {
  if (!oldest) {
    fill(el, h('span', { class: 'big' }, 'none active'));
    return;
  }
  fill(el,
    h('p', null, sagaLink(oldest.saga_id), ' ', badge(oldest.status)),
    h('p', { class: 'muted' }, `${oldest.type} · waiting ${duration(oldest.waiting_s * 1000)} since `, time(oldest.updated_at)));
}

// A line chart: x is time (oldest bucket left), y is records per second.
function drawRates(chart, note, rates) {
  // Drawn at the chart's own width, one unit a pixel, so its text stays readable on a
  // phone; each refresh follows a change of the window's width.
  const W = Math.max(280, Math.round(chart.getBoundingClientRect().width) || 640);
  const H = 200;
  const left = 44;
  const right = 8;
  const top = 10;
  const bottom = 24;
  const buckets = rates.buckets || [];
  // Each bucket's own length: the last one runs from the newest sample to now.
  const seconds = (b) => b.seconds || rates.interval_s || 1;
  const started = buckets.map((b) => b.started / seconds(b));
  const ended = buckets.map((b) => b.ended / seconds(b));
  const peak = Math.max(0, ...started, ...ended);
  const max = niceCeil(peak);
  const x = (i) => left + (buckets.length > 1 ? (i * (W - left - right)) / (buckets.length - 1) : (W - left - right) / 2);
  const y = (rate) => top + (H - top - bottom) * (1 - rate / max);
  const parts = [];
  for (const tick of [0, max / 2, max]) {
    parts.push(svg('line', { class: 'grid', x1: left, x2: W - right, y1: y(tick), y2: y(tick) }));
    parts.push(svg('text', { class: 'axis', x: left - 6, y: y(tick) + 4, 'text-anchor': 'end' }, formatRate(tick)));
  }
  if (buckets.length) {
    const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    parts.push(svg('text', { class: 'axis', x: left, y: H - 6 }, clock(buckets[0].at)));
    parts.push(svg('text', { class: 'axis', x: W - right, y: H - 6, 'text-anchor': 'end' }, clock(buckets[buckets.length - 1].at)));
    for (const [cls, series] of [['started', started], ['ended', ended]]) {
      parts.push(svg('polyline', { class: `line ${cls}`, points: series.map((r, i) => `${x(i)},${y(r)}`).join(' ') }));
    }
    // One invisible column per bucket, whose tooltip gives its figures.
    const step = buckets.length > 1 ? (W - left - right) / (buckets.length - 1) : W - left - right;
    buckets.forEach((b, i) => parts.push(svg('rect', { class: 'hit', x: x(i) - step / 2, y: top, width: step, height: H - top - bottom },
      svg('title', null, `${clock(b.at)}: ${formatRate(started[i])}/s started, ${formatRate(ended[i])}/s ended`))));
  } else {
    parts.push(svg('text', { class: 'axis', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data yet'));
  }
  chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
  fill(chart, ...parts);
  const last = buckets.length - 1;
  note.textContent = buckets.length
    ? `Last ${formatRate(seconds(buckets[last]))} s: ${formatRate(started[last])} started/s, ${formatRate(ended[last])} ended/s; `
      + `${buckets.length} intervals of up to ${rates.interval_s || 10} s shown.`
    : 'No intervals measured yet.';
  chart.setAttribute('aria-label', `Starts and endings per second. ${note.textContent}`);
}

// The smallest of 1, 2, 5 × 10^n at or above `value` (1 for nothing).
function niceCeil(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * magnitude).find((m) => m >= value);
}

function formatRate(rate) {
  return rate >= 10 ? String(Math.round(rate)) : String(Number(rate.toFixed(rate < 1 ? 2 : 1)));
}
