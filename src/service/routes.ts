// The requests `extfs serve` answers (the routes are listed in protocol.ts). Every request is
// authenticated (auth.ts) before it is routed; every answer carries a MAC.
import crypto from 'node:crypto'
import fs from 'node:fs'
import type http from 'node:http'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import { LRUCache } from 'lru-cache'
import { DEFAULT_MAX_MANIFEST_BYTES } from '../manifest/io'
import { DEFAULT_MAX_DELTA_BYTES } from '../delta/io'
import { RequestVerifier, responseMac, sha256Hex } from './auth'
import type { RefusalReason, ServeMetrics } from './metrics'
import { IMAGE_NAME, parseConfigQuery, type ConfigQuery, type RemapAnswer } from './protocol'
import type { Image, ImageRegistry } from './registry'
import { shown, type RefusalLog } from './refusal-log'
import type { RemapScheduler } from './remap-schedule'

/** The body of every request: no route takes one (handle()). */
const NO_BODY = Buffer.alloc(0)

/** SHA-256 of the files served, by file identity: a big manifest is hashed once, not per mover. */
type HashCache = LRUCache<string, string>

export class Routes {
  private readonly hashes: HashCache = new LRUCache({ max: 256 })
  private closing = false

  constructor(
    private readonly registry: ImageRegistry,
    private readonly scheduler: RemapScheduler,
    private readonly verifier: RequestVerifier,
    private readonly key: Buffer,
    private readonly leaseMs: number,
    private readonly log: Logger,
    private readonly refusals: RefusalLog,
    private readonly metrics: ServeMetrics,
  ) {}

  /** Long polls from now on answer at once. */
  close(): void {
    this.closing = true
  }

  /**
   * Authenticates from the headers alone, before a byte of any body is read (this runs synchronously
   * from Node's headers-complete callback up to route()). No route takes a body (POST remap has none:
   * protocol.ts), so a request that announces one — a Content-Length other than 0, or any
   * Transfer-Encoding — is answered 413 and its connection destroyed, its body unread. Every other
   * request has the empty body, and its signature covers that body's hash: so method, target, time,
   * nonce and MAC are verified in full here, and nothing a sender without the key sends is buffered
   * beyond its headers (at most Node's 16 KiB header limit, for at most the headers timeout:
   * connections.ts).
   */
  async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now()
    const method = req.method ?? ''
    const target = req.url ?? ''
    if (announcesBody(req.headers)) {
      this.metrics.refused('too_large')
      this.refusals.refused('too_large', { remote: req.socket.remoteAddress, method, url: target, err: 'request with a body' })
      res.once('finish', () => req.socket.destroy())
      res.writeHead(413, { 'content-type': 'application/json', connection: 'close' }).end(JSON.stringify({ error: 'requests take no body' }) + '\n')
      return
    }
    const v = this.verifier.verify(method, target, req.headers, NO_BODY)
    const reply = new Reply(res, this.key, v.nonce, this.metrics)
    if (!v.ok) {
      this.refusals.refused(v.reason, { remote: req.socket.remoteAddress, method, url: target, err: v.error })
      return reply.refuse(401, v.reason, v.error)
    }
    this.log.debug({ remote: req.socket.remoteAddress, method, url: shown(target) }, 'request')
    return this.route(method, target, req, reply, started)
  }

  private async route(method: string, target: string, req: http.IncomingMessage, reply: Reply, started: number): Promise<void> {
    const q = target.indexOf('?')
    const pathname = q < 0 ? target : target.slice(0, q)
    const parts = pathname.split('/')
    // ['', 'images', name, what, seq?]
    if (parts[1] !== 'images' || parts.length < 2 || parts.length > 5) return reply.refuse(404, 'bad_path', `no such resource ${pathname}`)
    if (parts.length === 2) {
      if (method !== 'GET') return reply.refuse(405, 'bad_method', `${method} ${pathname}: only GET`)
      return reply.json(200, { images: this.registry.names() })
    }
    const name = parts[2]!
    if (!IMAGE_NAME.test(name)) return reply.refuse(400, 'bad_path', `invalid image name ${JSON.stringify(name)}`)
    const img = this.registry.get(name)
    if (!img) return reply.refuse(404, 'unknown_image', `no image ${name}`)
    switch (`${method} ${parts.slice(3, 4).join('')}${parts.length === 5 ? '/:seq' : ''}`) {
      case 'GET manifest':
        return reply.file(img.manifestPath, DEFAULT_MAX_MANIFEST_BYTES, this.hashes)
      case 'GET config': {
        const query = parseConfigQuery(new URLSearchParams(q < 0 ? '' : target.slice(q + 1)))
        if ('error' in query) return reply.refuse(400, 'bad_query', query.error)
        return this.config(img, query, req, reply, started)
      }
      case 'GET deltas/:seq':
        return this.delta(img, parts[4]!, reply)
      case 'POST remap':
        return this.remap(img, reply)
      default: {
        const known = parts.length === 4 && ['manifest', 'config', 'remap'].includes(parts[3]!)
        return reply.refuse(known ? 405 : 404, known ? 'bad_method' : 'bad_path', `no such resource ${method} ${pathname}`)
      }
    }
  }

  /** Answers at once, or holds the request until the config ID differs from `after` (or `waitMs` passed). */
  private async config(img: Image, query: ConfigQuery, req: http.IncomingMessage, reply: Reply, started: number): Promise<void> {
    const changed = () => {
      const row = this.registry.row(img)
      return query.after === undefined || row.configId !== query.after || row.state === 'released'
    }
    if (!changed() && query.waitMs > 0 && !this.closing) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          img.waiters.delete(done)
          req.socket.off('close', done)
          resolve()
        }
        const timer = setTimeout(done, query.waitMs)
        img.waiters.add(done)
        req.socket.once('close', done)
      })
      if (req.socket.destroyed) return
    }
    const answer = this.registry.answer(img, this.leaseMs, started)
    reply.json(200, answer)
    this.metrics.configAnswered(img.name, req.socket.remoteAddress, answer.state === 'current' ? this.leaseMs : undefined)
  }

  private async delta(img: Image, seqText: string, reply: Reply): Promise<void> {
    const seq = /^[1-9][0-9]{0,8}$/.test(seqText) ? Number(seqText) : NaN
    if (!Number.isSafeInteger(seq)) return reply.refuse(400, 'bad_query', `delta seq ${JSON.stringify(seqText)} is not a number from 1`)
    const d = this.registry.delta(img, seq)
    if (!d) return reply.refuse(404, 'no_delta', `image ${img.name} has no delta ${seq}`)
    if (d.blob) return reply.bytes(200, d.blob, 'application/json')
    return reply.file(d.path!, DEFAULT_MAX_DELTA_BYTES, this.hashes)
  }

  private async remap(img: Image, reply: Reply): Promise<void> {
    try {
      const r = await this.scheduler.remap(img, 'request')
      // seq lets a mover tell when its view has reached this config ID (src/mover/final-remap.ts).
      const seq = r.state === 'released' ? undefined : this.registry.seqOf(img, r.configId)
      const answer: RemapAnswer = { state: r.state, configId: r.configId, seq, deltaBytes: r.deltaBytes, manifestBytes: r.manifestBytes }
      return reply.json(200, answer)
    } catch (err) {
      return reply.refuse(500, 'remap_failed', `remap failed: ${(err as Error).message}`)
    }
  }
}

/** One response: JSON or file bytes, always with the response MAC when the request had a usable nonce. */
class Reply {
  constructor(private readonly res: http.ServerResponse, private readonly key: Buffer, private readonly nonce: string | undefined, private readonly metrics: ServeMetrics) {}

  json(status: number, value: unknown): void {
    this.bytes(status, Buffer.from(JSON.stringify(value) + '\n'), 'application/json')
  }

  /** An error answer `{"error": ...}`, counted by `reason`. */
  refuse(status: number, reason: RefusalReason, error: string): void {
    this.metrics.refused(reason)
    this.json(status, { error })
  }

  bytes(status: number, body: Buffer, type: string): void {
    this.res.writeHead(status, this.headers(status, sha256Hex(body), body.length, type)).end(body)
  }

  /**
   * Streams a file. The MAC needs the body's hash before the first byte goes out, so the file is read
   * twice through one descriptor: hashed (or the hash taken from `hashes` by the file's identity), then
   * sent. Manifests and deltas are replaced by rename, never rewritten in place, so both passes see
   * the same bytes.
   */
  async file(file: string, maxBytes: number, hashes: HashCache): Promise<void> {
    let fd: fs.promises.FileHandle
    try {
      fd = await fs.promises.open(file, 'r')
    } catch (err) {
      return this.refuse(404, 'unreadable', `${path.basename(file)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    try {
      const st = await fd.stat({ bigint: true })
      if (!st.isFile()) return this.refuse(500, 'unreadable', `${path.basename(file)} is not a regular file`)
      if (st.size > BigInt(maxBytes)) return this.refuse(500, 'unreadable', `${path.basename(file)} is ${st.size} bytes, over ${maxBytes}`)
      const size = Number(st.size)
      const id = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`
      let hash = hashes.get(id)
      if (hash === undefined) {
        const h = crypto.createHash('sha256')
        for await (const chunk of fd.createReadStream({ start: 0, autoClose: false })) h.update(chunk as Buffer)
        hash = h.digest('hex')
        hashes.set(id, hash)
      }
      this.res.writeHead(200, this.headers(200, hash, size, 'application/octet-stream'))
      if (size === 0) this.res.end()
      else await pipeline(fd.createReadStream({ start: 0, end: size - 1, autoClose: false }), this.res)
    } finally {
      await fd.close()
    }
  }

  private headers(status: number, bodySha256: string, length: number, type: string): http.OutgoingHttpHeaders {
    const h: http.OutgoingHttpHeaders = { 'content-type': type, 'content-length': length, 'cache-control': 'no-store' }
    if (this.nonce !== undefined) h['x-extfs-auth'] = responseMac(this.key, status, this.nonce, bodySha256)
    return h
  }
}

/** True when the request says a body follows (RFC 9112, 6.3): a Transfer-Encoding, or a Content-Length not 0. */
function announcesBody(h: http.IncomingHttpHeaders): boolean {
  return h['transfer-encoding'] !== undefined || (h['content-length'] !== undefined && h['content-length'] !== '0')
}
