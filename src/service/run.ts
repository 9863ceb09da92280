// `extfs serve` in the foreground: open the state, load the images, listen, and stop cleanly on
// SIGTERM/SIGINT (long polls answered, connections closed, database closed).
import fs from 'node:fs'
import type { AddressInfo } from 'node:net'
import { ExtfsError, ExitCode } from '../errors'
import { createLogger } from '../log'
import { readKeyFile } from '../manifest/sign'
import type { MetricsEndpoint, PromMetrics } from './prometheus'
import { ConfigServer } from './server'
import { ServeState } from './state'

export interface ServeCliOptions {
  listen: string
  key: string
  state: string
  /** Seconds. */
  interval: number
  lease: number
  skew: number
  /** MiB. */
  remapCache: number
  cert?: string
  tlsKey?: string
  /** host:port of the Prometheus endpoint; absent: no metrics. */
  metricsListen?: string
  maxConnections?: number
  maxConnectionsPerClient?: number
  logLevel: string
}

/** `host:port`, `[v6]:port`; port 0 picks a free one (the `serving` log line names it). */
export function parseListen(value: string, option = '--listen'): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(value)
  const port = m ? Number(m[3]) : NaN
  if (!m || port > 65535) throw new ExtfsError(ExitCode.Usage, `${option} takes <host>:<port>, got ${value}`)
  return { host: (m[1] ?? m[2])!, port }
}

export async function runServe(manifests: string[], o: ServeCliOptions): Promise<void> {
  const key = readKeyFile(o.key)
  const { host, port } = parseListen(o.listen)
  const metricsAt = o.metricsListen === undefined ? undefined : parseListen(o.metricsListen, '--metrics-listen')
  if (!!o.cert !== !!o.tlsKey) throw new ExtfsError(ExitCode.Usage, '--cert and --tls-key go together')
  const tls = o.cert && o.tlsKey ? { cert: readFile(o.cert, '--cert'), key: readFile(o.tlsKey, '--tls-key') } : undefined
  const log = createLogger({ level: o.logLevel })
  const state = new ServeState(o.state)
  let server: ConfigServer
  let endpoint: MetricsEndpoint | undefined
  try {
    // prom-client is loaded only when metrics are asked for.
    let metrics: PromMetrics | undefined
    if (metricsAt) {
      const prom = await import('./prometheus')
      metrics = new prom.PromMetrics()
      endpoint = new prom.MetricsEndpoint(metrics)
    }
    server = new ConfigServer({
      manifests, key, state, log, tls, metrics, maxConnections: o.maxConnections, maxConnectionsPerClient: o.maxConnectionsPerClient,
      intervalMs: Math.round(o.interval * 1000), remapCacheBytes: Math.round(o.remapCache * 2 ** 20), leaseMs: Math.round(o.lease * 1000), skewMs: Math.round(o.skew * 1000),
    })
    // The metrics address first: it is the one to give up if the other cannot be had.
    const metricsAddr = metricsAt && endpoint ? await endpoint.listen(metricsAt.host, metricsAt.port) : undefined
    const addr = await server.listen(host, port)
    log.info({
      url: `${tls ? 'https' : 'http'}://${shown(addr)}`, metrics: metricsAddr && `http://${shown(metricsAddr)}/metrics`,
      images: manifests.length, state: o.state, intervalS: o.interval, leaseS: o.lease,
      maxConnections: server.caps.total, maxConnectionsPerClient: server.caps.perClient,
    }, 'serving')
  } catch (err) {
    await endpoint?.close()
    state.close()
    throw err
  }
  // A state found damaged while serving stops serve (exit StateDamaged) rather than leave it answering
  // every request with 500 while the movers' leases run out.
  const stop = await new Promise<NodeJS.Signals | ExtfsError>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'))
    process.once('SIGINT', () => resolve('SIGINT'))
    state.onDamage = resolve
  })
  if (stop instanceof ExtfsError) log.error({ err: stop.message }, 'stopping: state database damaged')
  else log.info({ signal: stop }, 'stopping')
  await server.close()
  await endpoint?.close()
  state.close()
  log.info('stopped')
  if (stop instanceof ExtfsError) throw stop
}

function shown(addr: AddressInfo): string {
  return `${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`
}

function readFile(file: string, option: string): Buffer {
  try {
    return fs.readFileSync(file)
  } catch (err) {
    throw new ExtfsError(ExitCode.Usage, `${option} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
}
