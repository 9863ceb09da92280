// How many connections `extfs serve` holds, and for how long (docs/remap.md, "What serve spends on
// whoever connects"). Without the key an attacker can still open connections; these limits keep
// what they cost bounded, and keep one address from taking the descriptors every mover needs:
//   - in total, below the process's descriptor limit (server.maxConnections: Node closes a connection
//     over it before making a socket object of it);
//   - per client address, counted here: a connection over its address's cap is destroyed before the
//     HTTP (or TLS) layer sees it, so it costs no parser, TLS state or buffer;
//   - in time: a connection must finish its request's headers within HEADERS_TIMEOUT_MS, lie idle
//     between requests at most KEEP_ALIVE_TIMEOUT_MS, and never be silent longer than IDLE_TIMEOUT_MS
//     (above the longest long poll, which is silent while serve holds it).
import fs from 'node:fs'
import type http from 'node:http'
import type net from 'node:net'
import { MAX_WAIT_MS } from './protocol'

/** Default --max-connections (lowered to half the descriptor limit where that is less). */
export const DEFAULT_MAX_CONNECTIONS = 4096
/**
 * Default --max-connections-per-client. A mover host holds one long poll per view, plus a short-lived
 * connection or two while a view starts or a backup asks for its final remap: 64 leaves room for
 * dozens of views on one host (or behind one NAT address).
 */
export const DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 64

/** From connect to the end of a request's headers (a request carries no body: routes.ts). */
export const HEADERS_TIMEOUT_MS = 10_000
/** Between an answer and the next request on a kept-alive connection. */
export const KEEP_ALIVE_TIMEOUT_MS = 5_000
/** Silence on a connection at any time: longer than a long poll is held, so a held poll is never cut. */
export const IDLE_TIMEOUT_MS = MAX_WAIT_MS + 15_000
/** How often Node checks the headers timeout (its default, 30 s, would let a slow sender stay 40 s). */
export const TIMEOUT_CHECK_MS = 1_000
/** A TLS handshake not done in this long is dropped (Node's default is 120 s). */
export const HANDSHAKE_TIMEOUT_MS = 10_000

export interface ConnectionCaps {
  total: number
  perClient: number
}

/** The soft limit of open descriptors (RLIMIT_NOFILE) of this process, from /proc; undefined when unknown. */
export function descriptorLimit(limitsFile = '/proc/self/limits'): number | undefined {
  try {
    const m = /^Max open files\s+([0-9]+)\s/m.exec(fs.readFileSync(limitsFile, 'utf8'))
    return m ? Number(m[1]) : undefined
  } catch {
    return undefined
  }
}

/**
 * The caps in force: the total at most half the descriptor limit (the other half is for the state
 * database, the manifests and deltas being read, the remap thread, the log), the per-client cap at
 * most the total.
 */
export function connectionCaps(total = DEFAULT_MAX_CONNECTIONS, perClient = DEFAULT_MAX_CONNECTIONS_PER_CLIENT, nofile = descriptorLimit()): ConnectionCaps {
  const t = nofile === undefined ? total : Math.max(1, Math.min(total, Math.floor(nofile / 2)))
  return { total: t, perClient: Math.min(perClient, t) }
}

/** Options for http(s).createServer that bound how long a connection may take (see the top of this file). */
export const SERVER_TIMEOUTS = {
  headersTimeout: HEADERS_TIMEOUT_MS,
  // Requests have no body: the whole request is its headers.
  requestTimeout: HEADERS_TIMEOUT_MS,
  keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
  connectionsCheckingInterval: TIMEOUT_CHECK_MS,
  handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
} as const

/**
 * Counts `server`'s connections by client address and destroys, before anything else sees them, those
 * over `caps`. `onCut` is told of each cut connection (its address, or undefined when it had
 * already gone). An address's entry goes when its last connection closes: nothing is kept per
 * address that has none.
 */
export function limitConnections(server: http.Server, caps: ConnectionCaps, onCut: (remote: string | undefined) => void): void {
  server.timeout = IDLE_TIMEOUT_MS
  server.maxConnections = caps.total
  server.on('drop', (d?: { remoteAddress?: string }) => onCut(d?.remoteAddress))
  const open = new Map<string, number>()
  // The HTTP server's own 'connection' listener (the TLS one for https) runs only for admitted
  // sockets: it is taken off and called from ours.
  const accept = server.listeners('connection') as Array<(socket: net.Socket) => void>
  server.removeAllListeners('connection')
  server.on('connection', (socket: net.Socket) => {
    const remote = socket.remoteAddress
    const n = remote === undefined ? caps.perClient : open.get(remote) ?? 0
    if (n >= caps.perClient) {
      socket.destroy()
      onCut(remote)
      return
    }
    open.set(remote!, n + 1)
    socket.once('close', () => {
      const left = open.get(remote!)! - 1
      if (left === 0) open.delete(remote!)
      else open.set(remote!, left)
    })
    for (const fn of accept) fn.call(server, socket)
  })
}
