// Checks monitoring/dashboards/*.json (run by scripts/check-monitoring):
//  - structure: unique uids and panel ids, the template variables, every Prometheus
//    target on the $datasource variable, every metric selector filtered by $namespace;
//    every Infinity target (a table read from sagalog's list API) on the $infinity
//    variable, its request bounded by a status and a limit the API accepts;
//  - writes .gen/dashboard_<name>.ts, each dashboard as a literal that `satisfies`
//    SagalogDashboard (types.ts, from @grafana/schema), for `tsc` to type-check with
//    excess-property checks (an unknown or misspelt key is an error);
//  - writes .gen/dashboard_queries.yaml, every panel query as a recording rule (Grafana's
//    variables replaced by values), and every `promql` block of RUNBOOKS.md, for
//    `promtool check rules` to parse.
import { readFileSync, readdirSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
const dir = join(here, '..', 'dashboards');
const gen = join(here, '.gen');
mkdirSync(gen, { recursive: true });

const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);
const uids = new Set();
const groups = [];

// Grafana's variables, as values PromQL can parse.
const substitute = (expr) =>
  expr
    .replaceAll('$__rate_interval', '5m')
    .replaceAll('$__interval', '1m')
    .replaceAll('$__range', '1h')
    .replaceAll('$namespace', '.*')
    .replaceAll('$saga_type', '.*');

const INFINITY = 'yesoreyeram-infinity-datasource';
const STATUSES = ['STARTED', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'COMPENSATED', 'COMPENSATION_FAILED'];

// An Infinity query of sagalog's list API: on the $infinity variable, a bounded list.
function checkApiTarget(at, target, vars) {
  if (target.datasource.uid !== '${infinity}') problem(at, 'an Infinity target not on ${infinity}');
  if (!vars.includes('infinity')) problem(at, 'uses $infinity, which the dashboard does not define');
  if (target.url !== '/api/v1/sagas') problem(at, `an Infinity target reads ${target.url}, not /api/v1/sagas`);
  const params = Object.fromEntries((target.url_options?.params ?? []).map((p) => [p.key, p.value]));
  if (!STATUSES.includes(params.status)) problem(at, `status ${params.status} is not a saga status`);
  const limit = Number(params.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) problem(at, `limit ${params.limit} is not 1..1000`);
  if (target.root_selector !== 'items') problem(at, 'the list API returns its sagas in `items`');
}

const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
if (files.length < 3) problem(dir, `expected the three dashboards, found ${files.length}`);
for (const file of files) {
  const name = basename(file, '.json');
  const text = readFileSync(join(dir, file), 'utf8');
  const dash = JSON.parse(text);
  const where = `dashboards/${file}`;
  if (uids.has(dash.uid)) problem(where, `uid ${dash.uid} used twice`);
  uids.add(dash.uid);
  const vars = (dash.templating?.list ?? []).map((v) => v.name);
  for (const v of ['datasource', 'namespace']) {
    if (!vars.includes(v)) problem(where, `no template variable ${v}`);
  }
  const ids = new Set();
  const rules = [];
  for (const panel of dash.panels ?? []) {
    const at = `${where} panel ${panel.id} "${panel.title}"`;
    if (ids.has(panel.id)) problem(at, 'panel id used twice');
    ids.add(panel.id);
    if (!panel.targets?.length) problem(at, 'no queries');
    for (const target of panel.targets ?? []) {
      if (target.datasource?.type === INFINITY) {
        checkApiTarget(at, target, vars);
        continue;
      }
      if (target.datasource?.uid !== '${datasource}') problem(at, 'a target not on ${datasource}');
      const expr = target.expr ?? '';
      if (expr.includes('$saga_type') && !vars.includes('saga_type')) {
        problem(at, 'uses $saga_type, which the dashboard does not define');
      }
      for (const selector of expr.match(/\{[^}]*\}/g) ?? []) {
        if (!selector.includes('namespace=~"$namespace"')) {
          problem(at, `selector ${selector} is not filtered by namespace`);
        }
      }
      if (!/\{[^}]*\}/.test(expr)) problem(at, `query has no selector: ${expr}`);
      rules.push({
        record: `dashboard:${name}:panel_${panel.id}_${target.refId}`,
        expr: substitute(expr),
      });
    }
  }
  groups.push({ name: `dashboard_${name}`, rules });
  writeFileSync(
    join(gen, `dashboard_${name}.ts`),
    `import type { SagalogDashboard } from '../types';\n` +
      `export const dashboard = ${text.trim()} satisfies SagalogDashboard;\n`,
  );
}
const runbooks = readFileSync(join(here, '..', 'RUNBOOKS.md'), 'utf8');
const blocks = [...runbooks.matchAll(/^```promql\n([\s\S]*?)^```/gm)].map((m) => m[1].trim());
if (blocks.length < 10) problem('RUNBOOKS.md', `only ${blocks.length} promql blocks`);
groups.push({
  name: 'runbooks',
  rules: blocks.map((expr, i) => ({ record: `runbook:query_${i + 1}`, expr })),
});
writeFileSync(join(gen, 'dashboard_queries.yaml'), stringify({ groups }));
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log(
  `${files.length} dashboards and the runbooks: ${groups.reduce((n, g) => n + g.rules.length, 0)} queries`,
);
