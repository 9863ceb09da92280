// `extfs serve --metrics-listen`: serve's metrics in Prometheus' text format (prom-client), on an address
// of their own. Every metric of serve is defined here, and only here (docs/operations.md lists them);
// the rest of serve reports events through the ServeMetrics interface (metrics.ts). The endpoint answers
// GET /metrics and nothing else, without a key: metrics carry image names and counts, no config IDs, no
// paths, no keys, and it belongs on loopback or a management network.
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { REFUSAL_REASONS, REMAP_RESULTS, REMAP_TRIGGERS, type RefusalReason, type RemapOutcome, type RemapTrigger, type ServeMetrics } from './metrics'
import { listenOn } from './server'

/**
 * Remap durations, seconds: a remap of a small or bulk-mapped image takes ~10 ms, one of a million
 * files mapped one by one minutes (docs/file-server-scale.md).
 */
export const REMAP_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]

/**
 * Addresses remembered per image for lease_holders; more are counted as this many. Only requests that
 * passed authentication get here, so this bounds memory against a misbehaving mover, not an attacker.
 */
const MAX_HOLDERS = 4096

export class PromMetrics implements ServeMetrics {
  readonly registry = new Registry()
  /** Per image: each address answered a lease, and until when (performance.now() ms) that lease runs. */
  private readonly leases = new Map<string, Map<string, number>>()

  private readonly configIdChanges = this.counter('extfs_serve_config_id_changes_total', 'Times the config ID serve answers for the image changed (a delta published, the manifest exported again).', ['image'])
  private readonly deltasPublished = this.counter('extfs_serve_deltas_published_total', 'Deltas of the image serve published.', ['image'])
  private readonly chainDeltas = this.gauge('extfs_serve_chain_deltas', 'Deltas in the image\'s current chain (the manifest\'s config ID is 0).', ['image'])
  private readonly released = this.gauge('extfs_serve_image_released', '1 when the image is released (movers refuse opens), else 0.', ['image'])
  private readonly configAnswers = this.counter('extfs_serve_config_answers_total', 'Config answers sent for the image (long polls and renewals).', ['image'])
  private readonly remaps = this.counter('extfs_serve_remaps_total', 'Remaps of the image by what started them and what they found.', ['image', 'trigger', 'result'])
  private readonly remapSeconds = new Histogram({
    name: 'extfs_serve_remap_duration_seconds', help: 'How long remaps of the image took (failed ones too), seconds.',
    labelNames: ['image'], buckets: REMAP_BUCKETS_S, registers: [this.registry],
  })
  private readonly refusals = this.counter('extfs_serve_refused_requests_total', 'Requests answered with an error, by reason.', ['reason'])

  constructor() {
    const leases = this.leases
    new Gauge({
      name: 'extfs_serve_lease_holders', labelNames: ['image'], registers: [this.registry],
      help: 'Client addresses whose last config answer for the image granted a lease that has not run out (serve\'s --lease).',
      collect() {
        const now = performance.now()
        for (const [image, holders] of leases) {
          for (const [remote, until] of holders) if (until <= now) holders.delete(remote)
          this.set({ image }, holders.size)
        }
      },
    })
    collectDefaultMetrics({ register: this.registry })
    for (const reason of REFUSAL_REASONS) this.refusals.inc({ reason }, 0)
  }

  image(image: string): void {
    if (this.leases.has(image)) return
    this.leases.set(image, new Map())
    for (const c of [this.configIdChanges, this.deltasPublished, this.configAnswers]) c.inc({ image }, 0)
    for (const g of [this.chainDeltas, this.released]) g.set({ image }, 0)
    for (const trigger of REMAP_TRIGGERS) for (const result of REMAP_RESULTS) this.remaps.inc({ image, trigger, result }, 0)
    this.remapSeconds.zero({ image })
  }

  published(image: string, p: { configIdChanged: boolean; deltas: number; added: number; released: boolean }): void {
    if (p.configIdChanged) this.configIdChanges.inc({ image })
    this.deltasPublished.inc({ image }, p.added)
    this.chainDeltas.set({ image }, p.deltas)
    this.released.set({ image }, p.released ? 1 : 0)
  }

  configAnswered(image: string, remote: string | undefined, leaseMs: number | undefined): void {
    this.configAnswers.inc({ image })
    const holders = this.leases.get(image)
    if (leaseMs === undefined || remote === undefined || !holders) return
    // Delete first: a Map keeps insertion order, so the first key is the longest since answered.
    holders.delete(remote)
    if (holders.size >= MAX_HOLDERS) holders.delete(holders.keys().next().value!)
    holders.set(remote, performance.now() + leaseMs)
  }

  remapped(image: string, trigger: RemapTrigger, outcome: RemapOutcome, seconds: number): void {
    this.remaps.inc({ image, trigger, result: outcome })
    this.remapSeconds.observe({ image }, seconds)
  }

  refused(reason: RefusalReason): void {
    this.refusals.inc({ reason })
  }

  private counter<L extends string>(name: string, help: string, labelNames: L[]): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] })
  }

  private gauge<L extends string>(name: string, help: string, labelNames: L[]): Gauge<L> {
    return new Gauge({ name, help, labelNames, registers: [this.registry] })
  }
}

/** The plain-HTTP endpoint of --metrics-listen: GET /metrics, 404 for any other path, 405 for any other method. */
export class MetricsEndpoint {
  private readonly server: http.Server

  constructor(metrics: PromMetrics) {
    this.server = http.createServer((req, res) => {
      const pathname = (req.url ?? '').split('?')[0]
      if (pathname !== '/metrics') return void res.writeHead(404, { 'content-type': 'text/plain' }).end('only /metrics here\n')
      if (req.method !== 'GET') return void res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET' }).end('only GET\n')
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType, 'cache-control': 'no-store' }).end(text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      )
    })
  }

  listen(host: string, port: number): Promise<AddressInfo> {
    return listenOn(this.server, host, port, '--metrics-listen')
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve())
      this.server.closeAllConnections()
    })
  }
}
