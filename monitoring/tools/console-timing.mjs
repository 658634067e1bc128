// Times each console page in headless Chromium, from navigation until the page says it
// is ready (data-state="ready"), for benches/src/bin/console.rs. Each run opens the
// page fresh (a new tab, no cache), as a reload or a shared link would.
//   SAGALOG_URL       the server
//   SAGALOG_CHROMIUM  the Chromium binary
//   SAGALOG_SAGA      a saga id for the one-saga page
//   SAGALOG_RUNS      runs per page

import puppeteer from 'puppeteer-core';

const base = process.env.SAGALOG_URL;
const saga = process.env.SAGALOG_SAGA;
const runs = Number(process.env.SAGALOG_RUNS || 10);
const pages = [
  ['overview', '#/overview'],
  ['sagas', '#/sagas'],
  ['sagas', '#/sagas?status=COMPLETED'],
  ['saga', `#/sagas/${encodeURIComponent(saga)}`],
  ['dead-letters', '#/dead-letters'],
  ['definitions', '#/definitions'],
  ['bulk', '#/bulk?status=COMPENSATION_FAILED'],
];

const browser = await puppeteer.launch({
  executablePath: process.env.SAGALOG_CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
});
try {
  for (const [name, hash] of pages) {
    const took = [];
    for (let run = 0; run < runs; run += 1) {
      const tab = await browser.newPage();
      await tab.setCacheEnabled(false);
      const started = performance.now();
      await tab.goto(`${base}/console/${hash}`, { waitUntil: 'domcontentloaded' });
      await tab.waitForSelector(`#page[data-page="${name}"][data-state="ready"]`, { timeout: 30_000 });
      took.push(performance.now() - started);
      await tab.close();
    }
    took.sort((a, b) => a - b);
    const median = took[Math.floor(took.length / 2)];
    console.log(`  ${hash.padEnd(40)} ${median.toFixed(0).padStart(6)} ${took[took.length - 1].toFixed(0).padStart(6)}`);
  }
} finally {
  await browser.close();
}
