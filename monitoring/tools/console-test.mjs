// The operator console in headless Chromium, driven by puppeteer-core (pinned in
// package.json) with the system's Chromium. tests/console.rs starts a real server
// holding sagas in every status and a dead letter, then runs this script with:
//   SAGALOG_URL          the server, e.g. http://127.0.0.1:41234
//   SAGALOG_TOKEN        its admin token
//   SAGALOG_CHROMIUM     the Chromium binary
//   SAGALOG_SCREENSHOTS  where each page's screenshot goes
//   SAGALOG_FIXTURE      JSON: what the server holds (ids, counts, the XSS text)
// It exits non-zero naming the first check that failed. Any console error, page
// error or failed request of the console fails the run too.

import assert from 'node:assert/strict';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/console.rs sets it)`);
  return value;
};
const base = env('SAGALOG_URL');
const token = env('SAGALOG_TOKEN');
const shots = env('SAGALOG_SCREENSHOTS');
const fixture = JSON.parse(env('SAGALOG_FIXTURE'));
const consoleUrl = `${base}/console/`;
const WAIT = { timeout: 15_000 };

const problems = [];
const requests = [];

const browser = await puppeteer.launch({
  executablePath: env('SAGALOG_CHROMIUM'),
  headless: true,
  // No sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});

let step = 'starting';
function check(name) {
  step = name;
  console.log(`- ${name}`);
}

try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('requestfailed', (request) => {
    // A request the console aborts itself on leaving a page is not a failure.
    const failure = request.failure()?.errorText ?? '';
    if (!failure.includes('ERR_ABORTED')) problems.push(`request failed: ${request.url()} ${failure}`);
  });
  page.on('request', (request) => requests.push(request.url()));
  page.on('dialog', (dialog) => {
    problems.push(`a browser dialog opened: ${dialog.message()}`);
    dialog.dismiss();
  });

  const shot = async (name) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  // Goes to a console route and waits until its page says it is ready.
  const open = async (hash, pageName) => {
    await page.goto(`${consoleUrl}${hash}`, { waitUntil: 'domcontentloaded' });
    await ready(pageName);
  };
  const ready = async (pageName) => {
    await page.waitForSelector(`#page[data-page="${pageName}"][data-state="ready"]`, WAIT).catch(async (e) => {
      const state = await page.$eval('#page', (m) => `${m.dataset.page}/${m.dataset.state}: ${m.querySelector('#page-error')?.textContent ?? ''}`);
      throw new Error(`${pageName} never became ready (${state}): ${e.message}`);
    });
  };
  const text = (selector) => page.$eval(selector, (e) => e.textContent.trim());
  const rows = (selector) => page.$$eval(selector, (list) => list.length);
  // Confirms the open #confirm dialog (its call shown first) and gives the admin
  // token if the console asks for it.
  const confirm = async (expectedCall) => {
    await page.waitForSelector('#confirm[open]', WAIT);
    const call = await text('#confirm-call');
    assert.ok(call.includes(expectedCall), `the confirmation shows ${expectedCall}: ${call}`);
    await page.click('#confirm-ok');
    await giveToken();
  };
  const giveToken = async () => {
    const asked = await page.waitForSelector('#token-dialog[open]', { timeout: 3_000 }).then(() => true, () => false);
    if (asked) {
      await page.type('#token-input', token);
      await page.click('#token-ok');
    }
  };

  check('the console answers with its security headers');
  const response = await page.goto(consoleUrl, { waitUntil: 'domcontentloaded' });
  const headers = response.headers();
  const csp = headers['content-security-policy'] ?? '';
  assert.match(csp, /script-src 'self'/, `CSP: ${csp}`);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, `CSP: ${csp}`);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.equal(headers['x-content-type-options'], 'nosniff');
  assert.equal(headers['x-frame-options'], 'DENY');

  check('overview: counts per status and their shares, rates, oldest, log, snapshot');
  await ready('overview');
  const stats = await (await fetch(`${base}/api/v1/stats`)).json();
  for (const [status, count] of Object.entries(stats.statuses)) {
    const shown = await text(`#counts [data-status="${status}"] .count`);
    assert.equal(Number(shown.replace(/[^0-9]/g, '')), count, `${status} count`);
  }
  assert.match(await text('#counts [data-status="COMPLETED"] .share'), /%/);
  // The chart has a point a bucket, for starts and for endings.
  const points = await page.$$eval('svg#rates polyline', (lines) => lines.map((l) => l.getAttribute('points').trim().split(/\s+/).length));
  assert.deepEqual(points, [stats.rates.buckets.length, stats.rates.buckets.length]);
  assert.ok((await text('#oldest')).includes(stats.oldest_active.saga_id), 'the oldest active saga is named');
  assert.equal(Number(await text('#dead-letter-count')), stats.dead_letters.total);
  assert.equal(stats.dead_letters.total, 1);
  assert.match(await text('#log-head'), /[0-9]/);
  assert.ok((await text('#snapshot-age')).length > 0);
  await shot('overview');

  check('sagas: a filter from the URL narrows the list');
  await open('#/sagas?status=COMPLETED', 'sagas');
  const completedRows = await page.$$eval('#saga-table tbody tr[data-saga-id] .status', (cells) => cells.map((c) => c.textContent.trim()));
  assert.equal(completedRows.length, fixture.counts.COMPLETED);
  assert.ok(completedRows.every((s) => s === 'COMPLETED'), completedRows.join());

  check('sagas: the form filters by type and status, and the filter survives a reload');
  await page.select('#filter [name="status"]', 'COMPENSATION_FAILED');
  await page.$eval('#filter [name="type"]', (input) => { input.value = ''; });
  await page.type('#filter [name="type"]', fixture.bulk_type);
  await page.click('#apply-filter');
  await page.waitForFunction(() => location.hash.includes('status=COMPENSATION_FAILED') && location.hash.includes('type='), WAIT);
  await ready('sagas');
  assert.equal(await rows('#saga-table tbody tr[data-saga-id]'), fixture.bulk_count);
  await page.reload({ waitUntil: 'domcontentloaded' });
  await ready('sagas');
  assert.equal(await page.$eval('#filter [name="status"]', (s) => s.value), 'COMPENSATION_FAILED');
  assert.equal(await page.$eval('#filter [name="type"]', (s) => s.value), fixture.bulk_type);
  assert.equal(await rows('#saga-table tbody tr[data-saga-id]'), fixture.bulk_count);

  check('sagas: a payload field (a business key) finds its saga');
  await page.click('#clear-filter');
  await ready('sagas');
  await page.type('#filter [name="payload_key"]', 'order_id');
  await page.type('#filter [name="payload_value"]', fixture.order_id);
  await page.click('#apply-filter');
  await page.waitForFunction(() => location.hash.includes('payload.order_id='), WAIT);
  await ready('sagas');
  const found = await page.$$eval('#saga-table tbody tr[data-saga-id]', (list) => list.map((r) => r.dataset.sagaId));
  assert.deepEqual(found, [fixture.order_saga]);
  await shot('sagas');

  check('sagas: every form control has a label, and the list pages on');
  const unlabelled = await page.$$eval('#filter input, #filter select', (controls) =>
    controls.filter((c) => c.type !== 'hidden' && c.labels.length === 0).map((c) => c.name));
  assert.deepEqual(unlabelled, []);
  await open('#/sagas?limit=20', 'sagas');
  const firstPage = await page.$$eval('#saga-table tbody tr[data-saga-id]', (list) => list.map((r) => r.dataset.sagaId));
  await page.click('#next-page');
  await page.waitForFunction((first) => {
    const row = document.querySelector('#saga-table tbody tr[data-saga-id]');
    return row && row.dataset.sagaId !== first && document.querySelector('#page').dataset.state === 'ready';
  }, WAIT, firstPage[0]);
  const secondPage = await page.$$eval('#saga-table tbody tr[data-saga-id]', (list) => list.map((r) => r.dataset.sagaId));
  assert.equal(firstPage.length, 20);
  assert.ok(secondPage.every((id) => !firstPage.includes(id)), 'the next page repeats none');
  assert.ok(await page.evaluate(() => location.hash.includes('cursor=') && location.hash.includes('limit=20')));

  check('keyboard: Tab goes through the filter in reading order, and Enter applies it');
  await open('#/sagas', 'sagas');
  await page.focus('#filter [name="status"]');
  const order = ['status'];
  for (let i = 0; i < 30 && !order.includes('apply-filter'); i += 1) {
    await page.keyboard.press('Tab');
    const at = await page.evaluate(() => document.activeElement.name || document.activeElement.id);
    if (order[order.length - 1] !== at) order.push(at);
  }
  assert.deepEqual(order, ['status', 'type', 'id_prefix', 'fromDate', 'toDate', 'payload_key', 'payload_value', 'apply-filter']);
  await page.focus('#filter [name="id_prefix"]');
  await page.keyboard.type('shop-0');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => location.hash.includes('id_prefix=shop-0'), WAIT);
  await ready('sagas');
  const prefixed = await page.$$eval('#saga-table tbody tr[data-saga-id]', (list) => list.map((r) => r.dataset.sagaId));
  assert.ok(prefixed.length > 0 && prefixed.every((id) => id.startsWith('shop-0')), prefixed.join());

  check("one saga: steps, payload, trace id and a timeline in the log's order");
  await open(`#/sagas/${fixture.completed}`, 'saga');
  assert.equal(await text('#saga-status'), 'COMPLETED');
  assert.equal(await rows('#steps tr[data-step]'), 3);
  assert.match(await text('#trace-id'), /^[0-9a-f]{32}$/);
  const history = await (await fetch(`${base}/api/v1/sagas/${fixture.completed}/history`)).json();
  const timeline = await page.$$eval('#timeline li[data-offset]', (list) => list.map((li) => ({ offset: Number(li.dataset.offset), kind: li.dataset.kind })));
  assert.deepEqual(timeline, history.items.map((r) => ({ offset: r.offset, kind: r.kind })));
  await shot('saga');

  check('one saga: the timeline filters by kind');
  await page.click('#kind-filter input[value="command_issued"]');
  const visible = await page.$$eval('#timeline li[data-offset]', (list) =>
    list.filter((li) => li.offsetParent !== null).map((li) => li.dataset.kind));
  assert.ok(visible.length > 0 && !visible.includes('command_issued'), visible.join());
  await shot('timeline-filtered');

  check('one saga: markup in a payload and a reason stays text');
  await open(`#/sagas/${fixture.xss}`, 'saga');
  assert.ok((await text('#saga-payload')).includes('<script>window.__xss = 1</script>'));
  const injected = await page.evaluate(() => ({
    xss: typeof window.__xss,
    scripts: [...document.querySelectorAll('#page script')].length,
    images: [...document.querySelectorAll('#page img')].length,
  }));
  assert.deepEqual(injected, { xss: 'undefined', scripts: 0, images: 0 });
  assert.ok((await page.$eval('#page', (m) => m.textContent)).includes('onerror'), 'the reason is shown as text');
  await open('#/sagas?id_prefix=xss', 'sagas');
  assert.equal(await page.evaluate(() => typeof window.__xss), 'undefined');
  assert.equal(await rows('#page img'), 0);
  await shot('xss');

  check('retry on a COMPENSATION_FAILED saga, with the token, changes its status');
  await open(`#/sagas/${fixture.compensation_failed}`, 'saga');
  assert.equal(await text('#saga-status'), 'COMPENSATION_FAILED');
  await page.click('#retry');
  await confirm(`POST /internal/v1/sagas/${fixture.compensation_failed}/retry`);
  await page.waitForFunction(() => document.querySelector('#saga-status')?.textContent.trim() === 'FAILED'
    && document.querySelector('#page').dataset.state === 'ready', WAIT);
  const api = await (await fetch(`${base}/api/v1/sagas/${fixture.compensation_failed}`)).json();
  assert.equal(api.status, 'FAILED', 'the API says so too');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('sagalog.adminToken')), token);

  check('override asks for a reason and shows its call');
  await page.click('#override');
  await page.waitForSelector('#confirm[open]', WAIT);
  assert.ok(await page.$eval('#confirm-ok', (b) => b.disabled), 'no override without a reason');
  await page.type('#override-reason', 'checked by hand');
  assert.match(await text('#confirm-call'), /PATCH \/internal\/v1\/sagas\/.*\/status[\s\S]*checked by hand/);
  await page.click('#confirm-cancel');

  check('bulk: retry of 50 sagas, 20 a call, reports 50 outcomes');
  await open(`#/bulk?status=COMPENSATION_FAILED&type=${fixture.bulk_type}&limit=20`, 'bulk');
  await page.select('#bulk-action', 'retry');
  await page.click('#bulk-start');
  await confirm('POST /internal/v1/sagas/bulk/retry?');
  await page.waitForFunction(() => /50 processed/.test(document.querySelector('#bulk-summary')?.textContent ?? ''), { timeout: 30_000 });
  assert.equal(await rows('#bulk-results tr[data-saga-id][data-outcome="retried"]'), 50);
  assert.match(await text('#bulk-progress'), /50/);
  const calls = requests.filter((url) => url.includes('/internal/v1/sagas/bulk/retry?'));
  assert.equal(calls.length, 3, `three calls of at most 20: ${calls.join(' ')}`);
  assert.equal(new Set(calls.map((url) => new URL(url).searchParams.get('toDate'))).size, 1, 'one toDate for the run');
  await shot('bulk');

  check('dead letters: listed and replayed');
  await open('#/dead-letters', 'dead-letters');
  const letter = `#dead-letters tr[data-offset="${fixture.dead_letter_offset}"]`;
  await page.waitForSelector(letter, WAIT);
  await page.click(`${letter} button.replay`);
  await confirm(`POST /internal/v1/outbox/dead-letters/${fixture.dead_letter_offset}/replay?partition=0`);
  await page.waitForFunction((sel) => {
    const row = document.querySelector(sel);
    return row && !row.querySelector('button.replay') && document.querySelector('#page').dataset.state === 'ready';
  }, WAIT, letter);
  await shot('dead-letters');

  check('definitions: steps drawn as a flow, compensable ones marked');
  await open('#/definitions', 'definitions');
  const shop = 'section.definition[data-name="shop"][data-version="1"]';
  assert.equal(await rows(`${shop} .flow .step[data-step]`), 3);
  assert.equal(await rows(`${shop} .flow .step.compensable`), 2);
  await shot('definitions');

  check('a phone-sized window: no page wider than the screen');
  await page.setViewport({ width: 375, height: 740, isMobile: true, hasTouch: true });
  for (const [hash, name] of [['#/overview', 'overview'], ['#/sagas', 'sagas'], [`#/sagas/${fixture.completed}`, 'saga'], ['#/bulk', 'bulk'], ['#/definitions', 'definitions']]) {
    await open(hash, name);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${name} is ${overflow}px wider than the window`);
    await shot(`phone-${name}`);
  }

  check('the token never left the tab: no cookie, no URL');
  assert.equal(await page.evaluate(() => document.cookie), '');
  assert.deepEqual(requests.filter((url) => url.includes(token)), []);

  check('no console errors, page errors or failed requests');
  assert.deepEqual(problems, []);
  console.log('all console checks passed');
} catch (error) {
  console.error(`console check failed at "${step}": ${error.stack ?? error}`);
  if (problems.length) console.error(`also seen:\n${problems.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
