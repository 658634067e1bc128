// The types sagalog's dashboards and custom resources are checked against
// (scripts/check-monitoring generates one `satisfies` file per object into .gen/).
import type { Dashboard, DataQuery, Panel } from '@grafana/schema';
import type * as gauge from '@grafana/schema/dist/esm/raw/composable/gauge/panelcfg/x/GaugePanelCfg_types.gen';
import type * as heatmap from '@grafana/schema/dist/esm/raw/composable/heatmap/panelcfg/x/HeatmapPanelCfg_types.gen';
import type * as piechart from '@grafana/schema/dist/esm/raw/composable/piechart/panelcfg/x/PieChartPanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as table from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

/** A Prometheus query as Grafana's Prometheus data source stores it. */
export interface PromQuery extends DataQuery {
  expr: string;
  legendFormat?: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  range?: boolean;
  interval?: string;
}

/** A query of the Infinity data source (yesoreyeram-infinity-datasource), as Grafana
 * stores it: the subset sagalog's dashboards use, a JSON API read by URL through the
 * backend parser into a table. Mirrors the plugin's query model. */
export interface InfinityQuery extends DataQuery {
  type: 'json';
  source: 'url';
  parser: 'backend';
  format: 'table';
  url: string;
  url_options: { method: 'GET'; params: { key: string; value: string }[] };
  root_selector: string;
  columns: { selector: string; text: string; type: 'string' | 'number' | 'timestamp' }[];
}

/** What a type looks like in JSON: Grafana's string enums (ThresholdsMode, ...) become
 * the union of their values, so a JSON string literal can satisfy them; everything else
 * keeps its shape, optionality and excess-property checks. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Json<U>[]
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** A panel of one plugin type, its options and custom field config typed by Grafana's
 * schema for that plugin (Partial: Grafana fills in the defaults), its targets Prometheus
 * queries (a table's may be Infinity queries of sagalog's API). */
type Typed<T extends string, O, C, Q = PromQuery> = Omit<Panel<Partial<O>, Partial<C>>, 'type' | 'targets' | 'options'> & {
  type: T;
  options: Partial<O>;
  targets: Q[];
};

export type SagalogPanel = Json<

  | Typed<'timeseries', timeseries.Options, timeseries.FieldConfig>
  | Typed<'stat', stat.Options, Record<string, never>>
  | Typed<'gauge', gauge.Options, Record<string, never>>
  | Typed<'piechart', piechart.Options, piechart.FieldConfig>
  | Typed<'table', table.Options, table.FieldConfig, PromQuery | InfinityQuery>
  | Typed<'heatmap', heatmap.Options, heatmap.FieldConfig>
>;

export type SagalogDashboard = Json<Omit<Dashboard, 'panels'>> & { panels: SagalogPanel[] };
