// The Kubernetes side of sagalog (run by scripts/check-monitoring):
//   node check-k8s.mjs --write-rule       writes k8s/prometheusrule.yaml from
//                                         monitoring/alerts/sagalog.yaml
//   node check-k8s.mjs BUILT.yaml         checks `kubectl kustomize k8s` output:
//     - the PrometheusRule's groups equal monitoring/alerts/sagalog.yaml's;
//     - the ServiceMonitor and PrometheusRule pass the prometheus-operator models'
//       validate(), and .gen/crd_*.ts has each as a literal that `satisfies` its model's
//       type, for `tsc` to reject unknown keys (validate() lets them through);
//     - the built-in kinds (and k8s/maintenance/pod.yaml) go to .gen/builtin.yaml for
//       kubernetes-validate --strict;
//     - the objects the design asks for are all there.
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const rulesFile = join(repo, 'monitoring', 'alerts', 'sagalog.yaml');
const ruleOut = join(repo, 'k8s', 'prometheusrule.yaml');
const alertGroups = parse(readFileSync(rulesFile, 'utf8')).groups;

if (process.argv[2] === '--write-rule') {
  const rule = {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PrometheusRule',
    metadata: { name: 'sagalog', labels: { 'app.kubernetes.io/name': 'sagalog' } },
    spec: { groups: alertGroups },
  };
  writeFileSync(
    ruleOut,
    '# Generated from monitoring/alerts/sagalog.yaml by\n' +
      '# `node monitoring/tools/check-k8s.mjs --write-rule`; scripts/check-monitoring fails\n' +
      '# when the two differ. Add the label your Prometheus\'s ruleSelector wants.\n' +
      stringify(rule, { lineWidth: 0 }),
  );
  console.log(`wrote ${ruleOut}`);
  process.exit(0);
}

const problems = [];
const built = parseAllDocuments(readFileSync(process.argv[2], 'utf8')).map((d) => d.toJSON());
const gen = join(here, '.gen');
mkdirSync(gen, { recursive: true });
const builtin = [];
const models = { ServiceMonitor, PrometheusRule };
const kinds = new Map();
for (const object of built) {
  const key = `${object.kind}/${object.metadata?.name}`;
  kinds.set(key, object);
  const Model = models[object.kind];
  if (!Model) {
    builtin.push(object);
    continue;
  }
  try {
    new Model(object).validate();
  } catch (e) {
    problems.push(`${key}: ${e.message}`);
  }
  const type = `I${object.kind}`;
  writeFileSync(
    join(gen, `crd_${object.kind}_${object.metadata.name}.ts`),
    `import type { ${type} } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${object.kind}';\n` +
      `export const object = ${JSON.stringify(object, null, 2)} satisfies ${type};\n`,
  );
}
builtin.push(parse(readFileSync(join(repo, 'k8s', 'maintenance', 'pod.yaml'), 'utf8')));
writeFileSync(join(gen, 'builtin.yaml'), builtin.map((o) => stringify(o)).join('---\n'));

const rule = kinds.get('PrometheusRule/sagalog');
if (!rule) problems.push('no PrometheusRule sagalog');
else if (!isDeepStrictEqual(rule.spec.groups, alertGroups)) {
  problems.push(
    'k8s/prometheusrule.yaml differs from monitoring/alerts/sagalog.yaml: run `node monitoring/tools/check-k8s.mjs --write-rule`',
  );
}
for (const want of [
  'Namespace/sagalog',
  'StatefulSet/sagalog',
  'Service/sagalog',
  'Service/sagalog-headless',
  'PodDisruptionBudget/sagalog',
  'NetworkPolicy/sagalog',
  'ServiceMonitor/sagalog',
  'PrometheusRule/sagalog',
  'ConfigMap/sagalog-dashboard-sagas',
  'ConfigMap/sagalog-dashboard-outbox',
  'ConfigMap/sagalog-dashboard-tracker',
]) {
  if (!kinds.has(want)) problems.push(`the build has no ${want}`);
}
for (const [key, object] of kinds) {
  if (key.startsWith('ConfigMap/sagalog-dashboard-')) {
    if (object.metadata.labels?.grafana_dashboard !== '1') problems.push(`${key}: not labelled for the Grafana sidecar`);
    for (const json of Object.values(object.data)) JSON.parse(json);
  }
}
const sts = kinds.get('StatefulSet/sagalog');
if (sts) {
  const pod = sts.spec.template.spec;
  const c = pod.containers[0];
  const expect = (ok, what) => ok || problems.push(`StatefulSet/sagalog: ${what}`);
  expect(c.readinessProbe?.httpGet?.path === '/readyz', 'readiness on /readyz');
  expect(c.livenessProbe?.httpGet?.path === '/healthz', 'liveness on /healthz');
  expect(c.lifecycle?.preStop, 'a preStop hook');
  expect(pod.terminationGracePeriodSeconds >= 45, 'terminationGracePeriodSeconds covers the 30 s drain, the relay stop and preStop');
  expect(pod.securityContext?.runAsNonRoot === true, 'non-root');
  expect(c.securityContext?.readOnlyRootFilesystem === true, 'a read-only root filesystem');
  expect(c.resources?.requests && c.resources?.limits, 'resource requests and limits');
  expect(sts.spec.volumeClaimTemplates?.length === 1, 'a volumeClaimTemplate for the data directory');
  expect(
    c.env.some((e) => e.name === 'SAGALOG_ADMIN_TOKEN' && e.valueFrom?.secretKeyRef),
    'the admin token from a Secret',
  );
  expect(sts.spec.replicas === 1, 'one replica (one engine per log)');
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log(`${built.length} objects built; ServiceMonitor and PrometheusRule valid; ${builtin.length} built-in objects for kubernetes-validate`);
