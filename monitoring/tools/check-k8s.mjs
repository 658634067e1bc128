// The Kubernetes side of sagalog (run by scripts/check-monitoring):
//   node check-k8s.mjs --write-rule       writes k8s/base/prometheusrule.yaml from
//                                         monitoring/alerts/sagalog.yaml
//   node check-k8s.mjs --overlay BUILT.yaml checks `kubectl kustomize k8s/monitoring`
//     output (the monitoring stack): the objects it must hold, resources and security
//     of every container, the rules ConfigMap equal to the alert rules, Grafana's
//     provisioning; writes .gen/builtin_monitoring.yaml (with the Secret template) for
//     kubernetes-validate --strict, and .gen/prometheus/ (the configuration with its
//     rule file) for `promtool check config`;
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
const ruleOut = join(repo, 'k8s', 'base', 'prometheusrule.yaml');
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

if (process.argv[2] === '--cluster') {
  checkCluster(process.argv[3]);
  process.exit(0);
}

// The three-pod overlay (k8s/cluster): what sharing the partitions needs, and
// .gen/builtin_cluster.yaml for kubernetes-validate --strict.
function checkCluster(file) {
  const objects = parseAllDocuments(readFileSync(file, 'utf8')).map((d) => d.toJSON());
  const problems = [];
  const find = (kind, name) => objects.find((o) => o.kind === kind && o.metadata?.name === name);
  const sts = find('StatefulSet', 'sagalog');
  const pdb = find('PodDisruptionBudget', 'sagalog');
  const headless = find('Service', 'sagalog-headless');
  const expect = (ok, what) => ok || problems.push(`k8s/cluster: ${what}`);
  expect(sts && pdb && headless, 'a StatefulSet, a PodDisruptionBudget and the headless Service');
  if (sts) {
    const pod = sts.spec.template.spec;
    const env = Object.fromEntries(pod.containers[0].env.map((e) => [e.name, e]));
    const nodes = Number(env.SAGALOG_NODES?.value);
    const partitions = Number(env.SAGALOG_PARTITIONS?.value);
    expect(sts.spec.replicas === 3 && nodes === sts.spec.replicas, 'three replicas, and SAGALOG_NODES the same');
    expect(partitions >= nodes && partitions <= 1024, 'SAGALOG_PARTITIONS at least the pods, at most 1024');
    const template = env.SAGALOG_PEER_URL_TEMPLATE?.value ?? '';
    expect(template.includes('{i}') && template.includes(`.${sts.spec.serviceName}.`), 'the peer URL template names the pods under the headless Service');
    expect(env.SAGALOG_CLUSTER_SECRET?.valueFrom?.secretKeyRef, 'the cluster secret from a Secret');
    expect(!env.SAGALOG_NODE_ID, 'the node id from the pod name, not fixed');
    const anti = pod.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
    expect(anti.some((t) => t.topologyKey === 'kubernetes.io/hostname'), 'no two pods on one node (required anti-affinity)');
    expect(sts.spec.podManagementPolicy === 'Parallel', 'pods started together');
  }
  if (pdb) expect(pdb.spec.maxUnavailable === 1 && pdb.spec.minAvailable === undefined, 'PDB maxUnavailable: 1');
  if (headless) expect(headless.spec.clusterIP === 'None', 'the headless Service is headless');
  if (problems.length) {
    console.error(problems.join('\n'));
    process.exit(1);
  }
  const gen = join(here, '.gen');
  mkdirSync(gen, { recursive: true });
  const builtin = objects.filter((o) => !['ServiceMonitor', 'PrometheusRule'].includes(o.kind));
  writeFileSync(join(gen, 'builtin_cluster.yaml'), builtin.map((o) => stringify(o)).join('---\n'));
  console.log(`cluster overlay: ${objects.length} objects built and checked`);
}

if (process.argv[2] === '--overlay') {
  checkOverlay(process.argv[3]);
  process.exit(0);
}

function checkOverlay(file) {
  const problems = [];
  const objects = parseAllDocuments(readFileSync(file, 'utf8')).map((d) => d.toJSON());
  const byKey = new Map(objects.map((o) => [`${o.kind}/${o.metadata?.name}`, o]));
  const find = (kind, prefix) => objects.find((o) => o.kind === kind && o.metadata.name.startsWith(prefix));
  for (const want of [
    'Namespace/monitoring',
    'PersistentVolumeClaim/prometheus-data',
    'Deployment/prometheus',
    'Service/prometheus',
    'PodDisruptionBudget/prometheus',
    'Deployment/kube-state-metrics',
    'Service/kube-state-metrics',
    'PersistentVolumeClaim/grafana-data',
    'Deployment/grafana',
    'Service/grafana',
    'Ingress/grafana',
    'PodDisruptionBudget/grafana',
    'ConfigMap/sagalog-rules',
    'ConfigMap/sagalog-dashboard-sagas',
    'ConfigMap/sagalog-dashboard-outbox',
    'ConfigMap/sagalog-dashboard-tracker',
  ]) {
    if (!byKey.has(want)) problems.push(`the monitoring overlay has no ${want}`);
  }
  for (const o of objects) {
    const namespaced = !['Namespace', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind);
    if (namespaced && o.metadata.namespace !== 'monitoring') problems.push(`${o.kind}/${o.metadata.name}: not in namespace monitoring`);
  }
  for (const d of objects.filter((o) => o.kind === 'Deployment')) {
    const pod = d.spec.template.spec;
    const at = `Deployment/${d.metadata.name}`;
    if (pod.securityContext?.runAsNonRoot !== true) problems.push(`${at}: not non-root`);
    for (const c of pod.containers) {
      if (!c.resources?.requests || !c.resources?.limits) problems.push(`${at}: ${c.name} has no requests and limits`);
      if (c.securityContext?.readOnlyRootFilesystem !== true) problems.push(`${at}: ${c.name} has a writable root filesystem`);
      if (!c.readinessProbe) problems.push(`${at}: ${c.name} has no readiness probe`);
      if (!/:v?[0-9][^:/]*$/.test(c.image) || c.image.endsWith(':latest')) problems.push(`${at}: ${c.image} is not pinned`);
    }
    const pdb = byKey.get(`PodDisruptionBudget/${d.metadata.name}`);
    if (d.metadata.name !== 'kube-state-metrics' && pdb?.spec.minAvailable !== 1) problems.push(`${at}: no PodDisruptionBudget with minAvailable 1`);
  }
  const rules = byKey.get('ConfigMap/sagalog-rules');
  if (rules && !isDeepStrictEqual(parse(rules.data['sagalog.yaml']).groups, alertGroups)) {
    problems.push('ConfigMap/sagalog-rules differs from monitoring/alerts/sagalog.yaml');
  }
  const grafana = byKey.get('Deployment/grafana')?.spec.template.spec;
  if (grafana) {
    const env = grafana.containers[0].env ?? [];
    const password = env.find((e) => e.name === 'GF_SECURITY_ADMIN_PASSWORD');
    if (password?.valueFrom?.secretKeyRef?.name !== 'grafana-admin') problems.push('Grafana: the admin password is not read from the Secret grafana-admin');
    if (!env.some((e) => e.name === 'GF_INSTALL_PLUGINS' && /yesoreyeram-infinity-datasource \d+\.\d+\.\d+/.test(e.value))) {
      problems.push('Grafana: the Infinity plugin is not installed at a pinned version');
    }
    const projected = grafana.volumes.find((v) => v.name === 'dashboards')?.projected?.sources.map((s) => s.configMap.name) ?? [];
    for (const name of ['sagas', 'outbox', 'tracker']) {
      if (!projected.includes(`sagalog-dashboard-${name}`)) problems.push(`Grafana does not mount the ${name} dashboard`);
    }
    const provisioning = find('ConfigMap', 'grafana-provisioning');
    const claim = grafana.volumes.find((v) => v.name === 'data')?.persistentVolumeClaim?.claimName;
    if (claim !== 'grafana-data') problems.push('Grafana: its data is not on the PersistentVolumeClaim grafana-data');
    if (!provisioning) problems.push('no ConfigMap grafana-provisioning');
    else {
      if (grafana.volumes.find((v) => v.name === 'provisioning')?.configMap?.name !== provisioning.metadata.name) {
        problems.push('Grafana does not mount the generated provisioning ConfigMap');
      }
      const sources = parse(provisioning.data['datasources.yaml']).datasources;
      const types = sources.map((s) => s.type);
      for (const type of ['prometheus', 'yesoreyeram-infinity-datasource']) {
        if (!types.includes(type)) problems.push(`Grafana has no ${type} data source`);
      }
      const api = sources.find((s) => s.type === 'yesoreyeram-infinity-datasource');
      if (api && !(api.jsonData?.allowedHosts ?? []).includes(api.url)) problems.push('the Infinity data source does not allow its own URL');
      const providers = parse(provisioning.data['dashboards.yaml']).providers;
      const mount = grafana.containers[0].volumeMounts.find((m) => m.name === 'dashboards')?.mountPath;
      if (!providers.some((p) => p.options?.path === mount)) problems.push('no dashboard provider reads the mounted dashboards');
    }
  }
  const config = find('ConfigMap', 'prometheus-config');
  if (!config) problems.push('no ConfigMap prometheus-config');
  else {
    // The configuration with its rule file where this machine has it, for promtool.
    const dir = join(here, '.gen', 'prometheus');
    mkdirSync(join(dir, 'rules'), { recursive: true });
    const text = config.data['prometheus.yml'];
    if (!text.includes('/etc/prometheus/rules/sagalog.yaml')) problems.push('prometheus.yml does not load /etc/prometheus/rules/sagalog.yaml');
    writeFileSync(join(dir, 'prometheus.yml'), text.replaceAll('/etc/prometheus/rules/', `${join(dir, 'rules')}/`));
    if (rules) writeFileSync(join(dir, 'rules', 'sagalog.yaml'), rules.data['sagalog.yaml']);
    const jobs = parse(text).scrape_configs.map((j) => j.job_name);
    if (!jobs.includes('sagalog')) problems.push('prometheus.yml has no job "sagalog" (the alerts and dashboards look for it)');
  }
  const template = parse(readFileSync(join(repo, 'k8s', 'monitoring', 'grafana-admin.secret.template.yaml'), 'utf8'));
  if (!String(template.stringData?.['admin-password']).startsWith('CHANGE-ME')) problems.push('the Secret template holds a password, not a placeholder');
  if (objects.some((o) => o.kind === 'Secret')) problems.push('the overlay ships a Secret; it must come from the template, filled in');
  writeFileSync(join(here, '.gen', 'builtin_monitoring.yaml'), [...objects, template].map((o) => stringify(o)).join('---\n'));
  if (problems.length) {
    console.error(problems.join('\n'));
    process.exit(1);
  }
  console.log(`monitoring overlay: ${objects.length} objects built and checked (and the Secret template)`);
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
    'k8s/base/prometheusrule.yaml differs from monitoring/alerts/sagalog.yaml: run `node monitoring/tools/check-k8s.mjs --write-rule`',
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
