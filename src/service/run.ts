// `extfs serve` in the foreground: open the state, load the images, listen, and stop cleanly on
// SIGTERM/SIGINT (long polls answered, connections closed, database closed).
import fs from 'node:fs'
import { ExtfsError, ExitCode } from '../errors'
import { createLogger } from '../log'
import { readKeyFile } from '../manifest/sign'
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
  logLevel: string
}

/** `host:port`, `[v6]:port`; port 0 picks a free one (the `serving` log line names it). */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):([0-9]{1,5})$/.exec(value)
  const port = m ? Number(m[3]) : NaN
  if (!m || port > 65535) throw new ExtfsError(ExitCode.Usage, `--listen takes <host>:<port>, got ${value}`)
  return { host: (m[1] ?? m[2])!, port }
}

export async function runServe(manifests: string[], o: ServeCliOptions): Promise<void> {
  const key = readKeyFile(o.key)
  const { host, port } = parseListen(o.listen)
  if (!!o.cert !== !!o.tlsKey) throw new ExtfsError(ExitCode.Usage, '--cert and --tls-key go together')
  const tls = o.cert && o.tlsKey ? { cert: readFile(o.cert, '--cert'), key: readFile(o.tlsKey, '--tls-key') } : undefined
  const log = createLogger({ level: o.logLevel })
  const state = new ServeState(o.state)
  let server: ConfigServer
  try {
    server = new ConfigServer({
      manifests, key, state, log, tls,
      intervalMs: Math.round(o.interval * 1000), remapCacheBytes: Math.round(o.remapCache * 2 ** 20), leaseMs: Math.round(o.lease * 1000), skewMs: Math.round(o.skew * 1000),
    })
    const addr = await server.listen(host, port)
    const shown = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
    log.info({ url: `${tls ? 'https' : 'http'}://${shown}:${addr.port}`, images: manifests.length, state: o.state, intervalS: o.interval, leaseS: o.lease }, 'serving')
  } catch (err) {
    state.close()
    throw err
  }
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'))
    process.once('SIGINT', () => resolve('SIGINT'))
  })
  log.info({ signal }, 'stopping')
  await server.close()
  state.close()
  log.info('stopped')
}

function readFile(file: string, option: string): Buffer {
  try {
    return fs.readFileSync(file)
  } catch (err) {
    throw new ExtfsError(ExitCode.Usage, `${option} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
}
