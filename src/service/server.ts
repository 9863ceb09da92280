// `extfs serve`: the initiator's config-ID service (docs/remap.md, "extfs serve and leases"), over
// node:http(s), no framework. What it answers comes from the files `extfs export`/`extfs remap` write
// (manifest, config-ID record, delta files); the SQLite state (state.ts) remembers each image's config
// ID and delta history so a restarted serve answers for the images it had. One job per module:
//   registry.ts        the images, kept in step with their records; long polls wait there
//   remap-schedule.ts  when to remap, one at a time; remap-worker.ts runs them off the event loop
//   routes.ts          authentication and the requests (protocol.ts: what crosses the wire)
//   connections.ts     how many connections, for how long; refusal-log.ts what is logged of refusals
//   reclaim.ts         memory a burst of connections took, given back when it ends
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo, Server as NetServer } from 'node:net'
import type { Logger } from 'pino'
import { ExitCode, ExtfsError } from '../errors'
import { DEFAULT_SKEW_MS, RequestVerifier } from './auth'
import { connectionCaps, limitConnections, SERVER_TIMEOUTS, type ConnectionCaps } from './connections'
import { RefusalLog, shown } from './refusal-log'
import { NO_METRICS, type ServeMetrics } from './metrics'
import { ImageRegistry } from './registry'
import { DEFAULT_INTERVAL_MS, RemapScheduler } from './remap-schedule'
import { WorkerRemapper, type Remapper } from './remap-worker'
import { Reclaimer } from './reclaim'
import { Routes } from './routes'
import { isStateDamaged, type ServeState } from './state'

export const DEFAULT_LEASE_MS = 30_000

export interface ServiceOptions {
  manifests: string[]
  key: Buffer
  state: ServeState
  log: Logger
  /** Default: the real remapper in a worker thread, keeping at most `remapCacheBytes` between remaps. */
  remapper?: Remapper
  remapCacheBytes?: number
  /**
   * Re-map each image this often at most, ms (longer for long remaps: REMAP_COST_FACTOR); 0: only on
   * POST /images/:name/remap.
   */
  intervalMs?: number
  leaseMs?: number
  skewMs?: number
  tls?: { cert: Buffer; key: Buffer }
  /** Where serve reports what it does (--metrics-listen: prometheus.ts); default: nowhere. */
  metrics?: ServeMetrics
  /** --max-connections, --max-connections-per-client (connections.ts: defaults, and the descriptor limit). */
  maxConnections?: number
  maxConnectionsPerClient?: number
}

export class ConfigServer {
  private readonly registry: ImageRegistry
  private readonly scheduler: RemapScheduler
  private readonly routes: Routes
  private readonly server: http.Server
  private readonly refusals: RefusalLog
  private readonly reclaimer: Reclaimer
  /** The connection caps in force (after the descriptor limit). */
  readonly caps: ConnectionCaps

  constructor(opts: ServiceOptions) {
    const metrics = opts.metrics ?? NO_METRICS
    this.registry = new ImageRegistry(opts.manifests, opts.key, opts.state, opts.log, metrics)
    const remapper = opts.remapper ?? new WorkerRemapper(opts.remapCacheBytes)
    this.scheduler = new RemapScheduler(this.registry, remapper, opts.key, opts.log, opts.intervalMs ?? DEFAULT_INTERVAL_MS, metrics)
    const verifier = new RequestVerifier(opts.key, opts.state, opts.skewMs ?? DEFAULT_SKEW_MS)
    this.refusals = new RefusalLog(opts.log)
    this.routes = new Routes(this.registry, this.scheduler, verifier, opts.key, opts.leaseMs ?? DEFAULT_LEASE_MS, opts.log, this.refusals, metrics)
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.routes.handle(req, res).catch((err) => {
        // A damaged state stops serve (run.ts logs it once): no answer at all, not a 500 without a MAC.
        if (isStateDamaged(err)) return req.socket.destroy()
        opts.log.error({ url: shown(req.url ?? ''), err: (err as Error).message }, 'request failed')
        if (!res.headersSent) res.writeHead(500).end()
        else res.destroy()
      })
    }
    this.server = opts.tls ? https.createServer({ ...SERVER_TIMEOUTS, cert: opts.tls.cert, key: opts.tls.key }, handler) : http.createServer(SERVER_TIMEOUTS, handler)
    // Expect: 100-continue is not answered "continue": the request goes to the handler as it is (and
    // is refused there, as every request announcing a body is).
    this.server.on('checkContinue', handler)
    this.caps = connectionCaps(opts.maxConnections, opts.maxConnectionsPerClient)
    limitConnections(this.server, this.caps, (remote) => {
      metrics.refused('too_many_connections')
      this.refusals.refused('too_many_connections', { remote, err: `over ${this.caps.perClient} connections from one address or ${this.caps.total} in all` })
    })
    this.reclaimer = new Reclaimer(opts.log)
    this.server.on('connection', () => this.reclaimer.connected())
    this.server.on('drop', () => this.reclaimer.connected())
  }

  /** Binds, starts watching and the remap schedule; resolves with the bound address. */
  async listen(host: string, port: number): Promise<AddressInfo> {
    const addr = await listenOn(this.server, host, port, '--listen')
    this.registry.start()
    this.scheduler.start()
    return addr
  }

  /** Answers every long poll with the state as it is, stops watching and remapping, closes connections. */
  async close(): Promise<void> {
    this.routes.close()
    this.registry.close()
    const closed = new Promise<void>((resolve) => {
      this.server.close(() => resolve())
      this.server.closeIdleConnections()
      // Answers in flight get a moment to finish; then everything goes.
      setTimeout(() => this.server.closeAllConnections(), 1000).unref()
    })
    await this.scheduler.close()
    await closed
    this.refusals.close()
    this.reclaimer.stop()
  }
}

/** Binds `server`; an address that cannot be had (in use, not ours) is one line naming `option`, the usage exit code. */
export function listenOn(server: NetServer, host: string, port: number, option: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(new ExtfsError(ExitCode.Usage, `cannot listen on ${host}:${port} (${option}): ${err.code ?? err.message}`))
    server.once('error', onError)
    server.listen(port, host, () => {
      server.off('error', onError)
      resolve(server.address() as AddressInfo)
    })
  })
}
