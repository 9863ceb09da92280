// `extfs status --prometheus`: the views' counters in Prometheus's text format, for node_exporter's
// textfile collector (docs/operations.md). One registry per call: each run is a snapshot, so counters
// are set once to the value the view reported.
import { Counter, Gauge, Registry } from 'prom-client'
import type { StatusReport, ViewEntry } from './status'
import type { ViewState } from '../mover/control'
import { shardName } from '../view/engine'

const STATES: (ViewState | 'dead' | 'not-answering')[] = ['serving', 'released', 'not-current', 'unknown', 'lease-expired', 'dead', 'not-answering']

export async function statusMetrics(r: StatusReport): Promise<string> {
  const registry = new Registry()
  const gauge = (name: string, help: string, labelNames: string[] = ['mountpoint']) => new Gauge({ name, help, labelNames, registers: [registry] })
  const counter = (name: string, help: string) => new Counter({ name, help, labelNames: ['mountpoint'], registers: [registry] })
  const m = {
    views: gauge('extfs_views', 'extfs views mounted on this host', []),
    up: gauge('extfs_view_up', '1 when the view answered for itself, 0 when its process is gone or silent'),
    state: gauge('extfs_view_state', '1 for the state the view is in', ['mountpoint', 'state']),
    info: gauge('extfs_view_info', 'the view\'s source, image, current config ID and shard (index/count; empty: the whole image)', ['mountpoint', 'source', 'config_id', 'current_config_id', 'engine', 'shard']),
    seq: gauge('extfs_view_chain_position', 'deltas of the config-ID chain the view has applied'),
    started: gauge('extfs_view_start_time_seconds', 'when the view started, Unix time'),
    lease: gauge('extfs_view_lease_seconds_left', 'from serve: how long opens are still served without asking the initiator'),
    files: gauge('extfs_view_image_files', 'regular files in the frozen image'),
    bytes: gauge('extfs_view_image_bytes', 'bytes of the regular files in the frozen image'),
    opened: gauge('extfs_view_files_opened', 'distinct regular files opened since mount'),
    tainted: gauge('extfs_view_tainted_files', 'files read under a map a delta superseded and not read again'),
    opens: counter('extfs_view_opens_total', 'opens served'),
    reads: counter('extfs_view_reads_total', 'read requests served'),
    readBytes: counter('extfs_view_read_bytes_total', 'bytes answered to read requests'),
    pushed: counter('extfs_view_pushed_bytes_total', 'bytes of large files stored in the page cache ahead of the reader'),
    prefetchedFiles: counter('extfs_view_prefetched_files_total', 'small files stored in the page cache ahead of the reader'),
    prefetchedBytes: counter('extfs_view_prefetched_bytes_total', 'bytes of those small files'),
    refused: counter('extfs_view_refused_total', 'opens and reads refused (image not current, lease run out) or failed'),
    failed: counter('extfs_view_failed_reads_total', 'reads that failed with a device error'),
  }
  m.views.set(r.views.length)
  for (const v of r.views) setView(m, v)
  return registry.metrics()
}

type Metrics = Record<string, Gauge | Counter>

function setView(m: Metrics, v: ViewEntry): void {
  const mountpoint = v.mountpoint
  const g = (name: string, value: number, labels: Record<string, string> = {}) => (m[name] as Gauge).set({ mountpoint, ...labels }, value)
  const c = (name: string, value: number) => (m[name] as Counter).inc({ mountpoint }, value)
  for (const s of STATES) g('state', s === v.state ? 1 : 0, { state: s })
  if (!('schema' in v)) return g('up', 0)
  g('up', 1)
  g('info', 1, { source: v.source, config_id: v.configId, current_config_id: v.position.configId, engine: v.engine, shard: v.shard ? shardName(v.shard) : '' })
  g('seq', v.position.seq)
  g('started', Date.parse(v.startedAt) / 1000)
  if (v.lease) g('lease', v.lease.leftMs / 1000)
  g('tainted', v.tainted)
  c('refused', v.refused)
  c('failed', v.failedReads.requests)
  if (v.image) {
    g('files', v.image.files)
    g('bytes', v.image.bytes)
  }
  if (v.served) {
    g('opened', v.served.filesOpened)
    c('opens', v.served.opens)
    c('reads', v.served.reads)
    c('readBytes', v.served.readBytes)
    c('pushed', v.served.pushedBytes)
    c('prefetchedFiles', v.served.prefetchedFiles)
    c('prefetchedBytes', v.served.prefetchedBytes)
  }
}
