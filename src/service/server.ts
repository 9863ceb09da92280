// `extfs serve`: the initiator's config-ID service (docs/remap.md, "extfs serve and leases").
// node:http(s), no framework. Every request is authenticated (src/service/auth.ts) before it is routed,
// every answer carries a MAC. What is served comes from the files `extfs export`/`extfs remap` write
// (manifest, config-ID record, delta files); the SQLite state (src/service/state.ts) remembers each
// image's config ID and delta history so a restarted serve answers for the images it had.
//
//   GET  /images                                  {"images": [name...]}
//   GET  /images/:name/manifest                   the manifest file's bytes
//   GET  /images/:name/config?after=<c>&wait=<ms> {image, configId, state, deltas, leaseMs, heldMs}, long poll
//   GET  /images/:name/deltas/:seq                delta seq's bytes
//   POST /images/:name/remap                      remap now; {state, configId, seq?, deltaBytes?, manifestBytes}
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import { deltaPathOf, fileStamp, readRecord, recordPath } from '../configid/record'
import { DEFAULT_MAX_MANIFEST_BYTES } from '../manifest/io'
import { streamOrReadManifest, type InodeSink } from '../manifest/stream'
import type { ManifestHeader } from '../manifest/types'
import { DEFAULT_MAX_DELTA_BYTES } from '../delta/io'
import { ManifestError, ExtfsError, ExitCode } from '../errors'
import { remapImage, type RemapResult } from '../remap/remap'
import { RemapCache } from '../remap/cache'
import { DEFAULT_SKEW_MS, RequestVerifier, responseMac, sha256Hex } from './auth'
import type { ImageRow, ServeState } from './state'

export const DEFAULT_LEASE_MS = 30_000
export const DEFAULT_INTERVAL_MS = 60_000
/**
 * The remap schedule's budget: a remap maps every file of the image again (0.05 s of CPU per 5,000
 * files here; 0.23 s for an image's first, with nothing kept yet), so at a fixed interval its cost
 * would grow with the file count. After each remap of an image, the next scheduled one comes no sooner
 * than this many times that remap's duration times the number of images: remaps run one at a time on serve's thread, so scheduled remaps together take at
 * most 1/50 = 2% of one core, however large the images. Nothing is lost for a backup run by `extfs
 * backup`, which asks for one remap of its own at its end (docs/remap.md, "Up to the end of a backup").
 */
export const REMAP_COST_FACTOR = 50
/** The longest a config request may be held open. */
export const MAX_WAIT_MS = 60_000
/** Requests carry no real bodies (POST remap has none): anything bigger is refused unread. */
const MAX_BODY_BYTES = 64 * 1024
/** setTimeout's longest delay (longer ones fire at once): a later remap is looked at again then. */
const MAX_TIMER_MS = 2 ** 31 - 1
/** How often records are checked by stat in case fs.watch missed an event (NFS, overlay), ms. */
const RECORD_POLL_MS = 2_000

/** Image names: the manifest's base name without `.json`; no dots first, so never `.` or `..`. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/
const CONFIG_ID_RE = /^[A-Za-z0-9_-]{8,128}$/

/**
 * Re-maps one image and publishes what moved (writes the delta, then the record). Injected so the
 * server can be tested without relocating real blocks: the remapper is another unit's
 * (src/remap/remap.ts, tested there), and the tests' fake writes real delta files and records.
 */
export interface Remapper {
  remap(manifestPath: string, opts: { key?: Buffer; warn: (m: string) => void; cache?: RemapCache }): RemapResult
}

export const realRemapper: Remapper = { remap: remapImage }

export interface ServiceOptions {
  manifests: string[]
  key: Buffer
  state: ServeState
  log: Logger
  remapper?: Remapper
  /**
   * Re-map each image this often at most, ms (longer for long remaps: REMAP_COST_FACTOR); 0: only on
   * POST /images/:name/remap.
   */
  intervalMs?: number
  leaseMs?: number
  skewMs?: number
  tls?: { cert: Buffer; key: Buffer }
}

/** `/shared/nightly.json` → `nightly`; refuses names a URL path could not carry safely. */
export function imageNameOf(manifestPath: string): string {
  const name = path.basename(manifestPath).replace(/\.json$/, '')
  if (!NAME_RE.test(name)) {
    throw new ExtfsError(ExitCode.Usage, `${manifestPath}: image name ${JSON.stringify(name)} must be letters, digits, '.', '_' or '-' (not first), at most 128`)
  }
  return name
}

interface Image {
  name: string
  manifestPath: string
  recordFile: string
  c0: string
  /** stat identity of the manifest and record when last read: a change means read again. */
  manifestStamp: string
  recordStamp: string
  /** Long polls waiting for this image's config to change. */
  waiters: Set<() => void>
  /** When the schedule remaps this image next (performance.now() ms). */
  nextRemapAt: number
  /**
   * What this image's remaps read before mapping (verified manifest, current map, path table), kept so
   * that each remap pays only for mapping the files; checked against the files at every remap.
   */
  remapCache: RemapCache
}

/** A config answer: what the mover needs to follow the chain and how long it may trust it. */
export interface ConfigAnswer {
  image: string
  configId: string
  state: 'current' | 'released'
  deltas: number[]
  leaseMs: number
  /** How long the server held the request before answering, ms: the answer was true at least that long after the request was sent. */
  heldMs: number
}

export class ConfigServer {
  private readonly images = new Map<string, Image>()
  private readonly verifier: RequestVerifier
  private readonly server: http.Server
  private readonly remapper: Remapper
  private readonly leaseMs: number
  private readonly intervalMs: number
  private readonly watchers: fs.FSWatcher[] = []
  private readonly timers: NodeJS.Timeout[] = []
  private scheduleTimer?: NodeJS.Timeout
  private readonly pendingSync = new Map<string, NodeJS.Timeout>()
  /** Manifest hashes by file identity: a big manifest is hashed once, not per mover. */
  private readonly hashCache = new Map<string, string>()
  private closing = false

  constructor(private readonly opts: ServiceOptions) {
    this.remapper = opts.remapper ?? realRemapper
    this.leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS
    this.intervalMs = opts.intervalMs ?? DEFAULT_INTERVAL_MS
    this.verifier = new RequestVerifier(opts.key, opts.state, opts.skewMs ?? DEFAULT_SKEW_MS)
    for (const m of opts.manifests) this.addImage(path.resolve(m))
    const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.handle(req, res).catch((err) => {
        opts.log.error({ url: req.url, err: (err as Error).message }, 'request failed')
        if (!res.headersSent) res.writeHead(500).end()
        else res.destroy()
      })
    }
    this.server = opts.tls ? https.createServer({ cert: opts.tls.cert, key: opts.tls.key }, handler) : http.createServer(handler)
  }

  /** Binds, starts watching and the remap schedule; resolves with the bound address. */
  async listen(host: string, port: number): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => reject(new ExtfsError(ExitCode.Usage, `cannot listen on ${host}:${port}: ${err.code ?? err.message}`))
      this.server.once('error', onError)
      this.server.listen(port, host, () => {
        this.server.off('error', onError)
        resolve()
      })
    })
    this.watch()
    this.timers.push(setInterval(() => this.pollRecords(), RECORD_POLL_MS))
    for (const img of this.images.values()) img.nextRemapAt = performance.now() + this.intervalMs
    this.armSchedule()
    return this.server.address() as AddressInfo
  }

  /** Answers every long poll with the state as it is, stops watching, closes connections. */
  async close(): Promise<void> {
    this.closing = true
    for (const t of this.timers) clearInterval(t)
    clearTimeout(this.scheduleTimer)
    for (const t of this.pendingSync.values()) clearTimeout(t)
    for (const w of this.watchers) w.close()
    for (const img of this.images.values()) for (const wake of [...img.waiters]) wake()
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve())
      this.server.closeIdleConnections()
      // Answers in flight get a moment to finish; then everything goes.
      setTimeout(() => this.server.closeAllConnections(), 1000).unref()
    })
  }

  // --- images and their state ------------------------------------------------------------------

  private addImage(manifestPath: string): void {
    const name = imageNameOf(manifestPath)
    const other = this.images.get(name)
    if (other) throw new ExtfsError(ExitCode.Usage, `${manifestPath} and ${other.manifestPath} would both be served as image ${name}: rename one`)
    const header = readManifestHeader(manifestPath, this.opts.key)
    const img: Image = {
      name, manifestPath, recordFile: recordPath(manifestPath, header.configRecord), c0: header.configId,
      manifestStamp: fileStamp(manifestPath), recordStamp: '', waiters: new Set(), nextRemapAt: Infinity, remapCache: new RemapCache(),
    }
    this.opts.state.registerImage(name, manifestPath, img.c0)
    this.images.set(name, img)
    this.sync(img)
    const row = this.opts.state.image(name)!
    this.opts.log.info({ image: name, manifest: manifestPath, c0: img.c0, configId: row.configId, state: row.state, deltas: this.opts.state.deltas(name).length }, 'image')
  }

  /**
   * Brings the state of `img` up to its record (the record is the truth: export, remap and release
   * write it): new deltas, a new config ID, released. Wakes the long polls when anything changed.
   * A delta that cannot be read or does not continue the chain is not published; the config ID still
   * is, so movers find the chain broken and refuse opens rather than serve the old map.
   */
  private sync(img: Image): void {
    const log = this.opts.log
    const state = this.opts.state
    const mStamp = fileStamp(img.manifestPath)
    if (mStamp !== img.manifestStamp) {
      // Exported again under the same name: a new chain.
      img.manifestStamp = mStamp
      try {
        const header = readManifestHeader(img.manifestPath, this.opts.key)
        if (header.configId !== img.c0) {
          log.info({ image: img.name, from: img.c0, to: header.configId }, 'manifest replaced: new image')
          img.c0 = header.configId
          img.recordFile = recordPath(img.manifestPath, header.configRecord)
          state.registerImage(img.name, img.manifestPath, img.c0)
          this.hashCache.clear()
          this.wake(img)
        }
      } catch (err) {
        log.error({ image: img.name, err: (err as Error).message }, 'manifest unreadable: still serving the last one read')
      }
    }
    img.recordStamp = fileStamp(img.recordFile)
    let record
    try {
      record = readRecord(img.recordFile)
    } catch (err) {
      log.warn({ image: img.name, err: (err as Error).message }, 'record unreadable: config unchanged')
      return
    }
    const row = state.image(img.name)!
    const known = state.deltas(img.name)
    const names = record.deltas ?? []
    let keep = 0
    while (keep < known.length && keep < names.length && known[keep]!.path === deltaPathOf(img.recordFile, names[keep]!)) keep++
    const added: { seq: number; from: string; to: string; path: string }[] = []
    let end = keep === 0 ? img.c0 : known[keep - 1]!.to
    for (let i = keep; i < names.length; i++) {
      const file = deltaPathOf(img.recordFile, names[i]!)
      try {
        const h = readDeltaHead(file)
        if (h.image !== img.c0) throw new ManifestError(`delta ${file} belongs to image ${h.image}, not ${img.c0}`)
        if (h.seq !== i + 1) throw new ManifestError(`delta ${file} has seq ${h.seq}, expected ${i + 1}`)
        if (h.from !== end) throw new ManifestError(`delta ${file} starts at ${h.from}, the chain is at ${end}`)
        added.push({ seq: i + 1, from: h.from, to: h.to, path: file })
        end = h.to
      } catch (err) {
        log.error({ image: img.name, err: (err as Error).message }, 'delta not published')
        break
      }
    }
    const dropped = known.length - keep
    if (dropped === 0 && added.length === 0 && record.configId === row.configId && record.state === row.state) return
    if (record.state === 'current' && end !== record.configId) {
      log.error({ image: img.name, chainEnd: end, configId: record.configId }, 'delta chain does not reach the record\'s config ID: movers will refuse opens until it does')
    }
    state.publish(img.name, record.configId, record.state, added, dropped > 0 ? keep + 1 : undefined)
    log.info({ image: img.name, from: row.configId, configId: record.configId, state: record.state, deltas: keep + added.length }, 'config changed')
    this.wake(img)
  }

  private wake(img: Image): void {
    for (const w of [...img.waiters]) w()
  }

  /** fs.watch on each record's directory: a `extfs remap` or `release` from cron is seen at once. */
  private watch(): void {
    const byDir = new Map<string, Image[]>()
    for (const img of this.images.values()) {
      for (const f of [img.recordFile, img.manifestPath]) {
        const list = byDir.get(path.dirname(f)) ?? []
        if (!list.includes(img)) list.push(img)
        byDir.set(path.dirname(f), list)
      }
    }
    for (const [dir, imgs] of byDir) {
      try {
        const w = fs.watch(dir, { persistent: false }, (_event, filename) => {
          for (const img of imgs) {
            const mine = filename === null || filename === path.basename(img.recordFile) || filename === path.basename(img.manifestPath)
            if (mine) this.syncSoon(img)
          }
        })
        w.on('error', (err) => this.opts.log.warn({ dir, err: err.message }, 'watch failed: relying on polling'))
        this.watchers.push(w)
      } catch (err) {
        this.opts.log.warn({ dir, err: (err as Error).message }, 'cannot watch: relying on polling')
      }
    }
  }

  /** Renames come as several events; one sync a moment later covers them all. */
  private syncSoon(img: Image): void {
    if (this.closing || this.pendingSync.has(img.name)) return
    this.pendingSync.set(img.name, setTimeout(() => {
      this.pendingSync.delete(img.name)
      this.sync(img)
    }, 20))
  }

  private pollRecords(): void {
    for (const img of this.images.values()) {
      if (fileStamp(img.recordFile) !== img.recordStamp || fileStamp(img.manifestPath) !== img.manifestStamp) this.sync(img)
    }
  }

  // --- the remap schedule ----------------------------------------------------------------------

  /** One timer, for the image due first (--interval 0: none). */
  private armSchedule(): void {
    clearTimeout(this.scheduleTimer)
    if (this.closing || this.intervalMs === 0 || this.images.size === 0) return
    const due = Math.min(...[...this.images.values()].map((img) => img.nextRemapAt))
    this.scheduleTimer = setTimeout(() => this.remapDue(), Math.min(MAX_TIMER_MS, Math.max(0, due - performance.now())))
  }

  /** Remaps each image whose time has come, then waits for the next one due. */
  private remapDue(): void {
    for (const img of this.images.values()) {
      if (this.closing || img.nextRemapAt > performance.now()) continue
      try {
        this.remapOne(img)
      } catch {
        // logged by remapOne; the image stays on the schedule
      }
    }
    this.armSchedule()
  }

  /**
   * When the schedule may remap `img` again after a remap (scheduled or asked for) that started at
   * `started` and took `ms`: --interval, or longer when remaps are long (REMAP_COST_FACTOR).
   */
  private reschedule(img: Image, started: number, ms: number): string | undefined {
    if (this.intervalMs === 0) return undefined
    img.nextRemapAt = started + Math.max(this.intervalMs, REMAP_COST_FACTOR * this.images.size * ms)
    return new Date(Date.now() + img.nextRemapAt - performance.now()).toISOString()
  }

  /**
   * Re-maps one image. Synchronous: FIEMAP of every file blocks this process while it runs (seconds
   * for a large image), which holds other answers back, never makes them wrong. Logged with how long it
   * took and when the schedule remaps this image next (also when it failed or found it released).
   */
  private remapOne(img: Image): RemapResult {
    const started = performance.now()
    const timing = () => {
      const ms = performance.now() - started
      return { ms: Math.round(ms), nextDue: this.reschedule(img, started, ms) }
    }
    let r: RemapResult
    try {
      r = this.remapNow(img)
    } catch (err) {
      this.opts.log.error({ image: img.name, err: (err as Error).message, ...timing() }, 'remap failed')
      throw err
    }
    const t = timing()
    if (r.state !== 'released') this.opts.log.info({ image: img.name, state: r.state, configId: r.configId, deltaBytes: r.deltaBytes, manifestBytes: r.manifestBytes, ...t }, 'remap')
    return r
  }

  private remapNow(img: Image): RemapResult {
    this.sync(img)
    const row = this.opts.state.image(img.name)!
    if (row.state === 'released') return { state: 'released', configId: row.configId, manifestBytes: fs.statSync(img.manifestPath).size }
    try {
      return this.remapper.remap(img.manifestPath, { key: this.opts.key, warn: (m) => this.opts.log.warn({ image: img.name }, m), cache: img.remapCache })
    } finally {
      this.sync(img)
    }
  }

  /** How many published deltas lead to `configId` (0: the manifest's); undefined when none does. */
  private seqOf(img: Image, configId: string): number | undefined {
    if (configId === img.c0) return 0
    return this.opts.state.deltas(img.name).find((d) => d.to === configId)?.seq
  }

  // --- requests ------------------------------------------------------------------------------

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now()
    const method = req.method ?? ''
    const target = req.url ?? ''
    const body = await readBody(req)
    if (body === undefined) {
      res.writeHead(413, { 'content-type': 'application/json', connection: 'close' }).end(JSON.stringify({ error: `request body over ${MAX_BODY_BYTES} bytes` }) + '\n')
      return
    }
    const v = this.verifier.verify(method, target, req.headers, body)
    const reply = new Reply(res, this.opts.key, v.nonce)
    if (!v.ok) {
      this.opts.log.warn({ remote: req.socket.remoteAddress, method, url: target, err: v.error }, 'refused')
      reply.json(401, { error: v.error })
      return
    }
    this.opts.log.debug({ remote: req.socket.remoteAddress, method, url: target }, 'request')
    const q = target.indexOf('?')
    const pathname = q < 0 ? target : target.slice(0, q)
    const query = new URLSearchParams(q < 0 ? '' : target.slice(q + 1))
    const parts = pathname.split('/')
    // ['', 'images', name, what, seq?]
    if (parts[1] !== 'images' || parts.length < 2 || parts.length > 5) return reply.json(404, { error: `no such resource ${pathname}` })
    if (parts.length === 2) {
      if (method !== 'GET') return reply.json(405, { error: `${method} ${pathname}: only GET` })
      return reply.json(200, { images: [...this.images.keys()].sort() })
    }
    const name = parts[2]!
    if (!NAME_RE.test(name)) return reply.json(400, { error: `invalid image name ${JSON.stringify(name)}` })
    const img = this.images.get(name)
    if (!img) return reply.json(404, { error: `no image ${name}` })
    const route = `${method} ${parts.slice(3, 4).join('')}${parts.length === 5 ? '/:seq' : ''}`
    switch (route) {
      case 'GET manifest':
        return reply.file(img.manifestPath, DEFAULT_MAX_MANIFEST_BYTES, this.hashCache)
      case 'GET config':
        return this.config(img, query, req, reply, started)
      case 'GET deltas/:seq':
        return this.delta(img, parts[4]!, reply)
      case 'POST remap': {
        try {
          const r = this.remapOne(img)
          // seq lets a mover tell when its view has reached this config ID (src/mover/final-remap.ts).
          const seq = r.state === 'released' ? undefined : this.seqOf(img, r.configId)
          return reply.json(200, { state: r.state, configId: r.configId, seq, deltaBytes: r.deltaBytes, manifestBytes: r.manifestBytes })
        } catch (err) {
          return reply.json(500, { error: `remap failed: ${(err as Error).message}` })
        }
      }
      default:
        return reply.json(parts.length === 4 && ['manifest', 'config', 'remap'].includes(parts[3]!) ? 405 : 404, { error: `no such resource ${method} ${pathname}` })
    }
  }

  private answer(img: Image, started: number): ConfigAnswer {
    const row = this.opts.state.image(img.name) as ImageRow
    return {
      image: img.c0, configId: row.configId, state: row.state, deltas: this.opts.state.deltas(img.name).map((d) => d.seq),
      leaseMs: this.leaseMs, heldMs: Math.floor(performance.now() - started),
    }
  }

  private async config(img: Image, query: URLSearchParams, req: http.IncomingMessage, reply: Reply, started: number): Promise<void> {
    const after = query.get('after') ?? undefined
    const waitText = query.get('wait') ?? '0'
    if (after !== undefined && !CONFIG_ID_RE.test(after)) return reply.json(400, { error: 'after must be a config ID' })
    if (!/^[0-9]{1,9}$/.test(waitText)) return reply.json(400, { error: 'wait must be milliseconds' })
    const waitMs = Math.min(Number(waitText), MAX_WAIT_MS)
    const changed = () => {
      const row = this.opts.state.image(img.name)!
      return after === undefined || row.configId !== after || row.state === 'released'
    }
    if (!changed() && waitMs > 0 && !this.closing) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          img.waiters.delete(done)
          req.socket.off('close', done)
          resolve()
        }
        const timer = setTimeout(done, waitMs)
        img.waiters.add(done)
        req.socket.once('close', done)
      })
      if (req.socket.destroyed) return
    }
    reply.json(200, this.answer(img, started))
  }

  private async delta(img: Image, seqText: string, reply: Reply): Promise<void> {
    const seq = /^[1-9][0-9]{0,8}$/.test(seqText) ? Number(seqText) : NaN
    if (!Number.isSafeInteger(seq)) return reply.json(400, { error: `delta seq ${JSON.stringify(seqText)} is not a number from 1` })
    const d = this.opts.state.delta(img.name, seq)
    if (!d) return reply.json(404, { error: `image ${img.name} has no delta ${seq}` })
    if (d.blob) return reply.bytes(200, d.blob, 'application/json')
    return reply.file(d.path!, DEFAULT_MAX_DELTA_BYTES, this.hashCache)
  }
}

/** One response: JSON or file bytes, always with the response MAC when the request had a usable nonce. */
class Reply {
  constructor(private readonly res: http.ServerResponse, private readonly key: Buffer, private readonly nonce: string | undefined) {}

  json(status: number, value: unknown): void {
    this.bytes(status, Buffer.from(JSON.stringify(value) + '\n'), 'application/json')
  }

  bytes(status: number, body: Buffer, type: string): void {
    this.res.writeHead(status, this.headers(status, sha256Hex(body), body.length, type)).end(body)
  }

  /**
   * Streams a file. The MAC needs the body's hash before the first byte goes out, so the file is read
   * twice through one descriptor: hashed (or the hash taken from `cache` by the file's identity), then
   * sent. Manifests and deltas are replaced by rename, never rewritten in place, so both passes see
   * the same bytes.
   */
  async file(file: string, maxBytes: number, cache: Map<string, string>): Promise<void> {
    let fd: fs.promises.FileHandle
    try {
      fd = await fs.promises.open(file, 'r')
    } catch (err) {
      return this.json(404, { error: `${path.basename(file)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` })
    }
    try {
      const st = await fd.stat({ bigint: true })
      if (!st.isFile()) return this.json(500, { error: `${path.basename(file)} is not a regular file` })
      if (st.size > BigInt(maxBytes)) return this.json(500, { error: `${path.basename(file)} is ${st.size} bytes, over ${maxBytes}` })
      const size = Number(st.size)
      const id = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`
      let hash = cache.get(id)
      if (hash === undefined) {
        const h = crypto.createHash('sha256')
        for await (const chunk of fd.createReadStream({ start: 0, autoClose: false })) h.update(chunk as Buffer)
        hash = h.digest('hex')
        if (cache.size > 256) cache.clear()
        cache.set(id, hash)
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

/** The body, or undefined when it is over MAX_BODY_BYTES. */
async function readBody(req: http.IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let got = 0
  for await (const chunk of req) {
    got += (chunk as Buffer).length
    if (got > MAX_BODY_BYTES) return undefined
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

/** The manifest's header (config ID, record), checked and its signature verified, without keeping its inodes. */
function readManifestHeader(manifestPath: string, key: Buffer): ManifestHeader {
  const ignore: InodeSink = { begin() {}, inode() {}, finish() {} }
  return streamOrReadManifest(manifestPath, ignore, key).header
}

/** The chain fields of a delta file; the mover checks the rest (validation, signature). */
function readDeltaHead(file: string): { image: string; seq: number; from: string; to: string } {
  let text: string
  try {
    const st = fs.statSync(file)
    if (!st.isFile() || st.size > DEFAULT_MAX_DELTA_BYTES) throw new ManifestError(`delta ${file} is not a regular file of at most ${DEFAULT_MAX_DELTA_BYTES} bytes`)
    text = fs.readFileSync(file, 'utf8')
  } catch (err) {
    if (err instanceof ManifestError) throw err
    throw new ManifestError(`delta ${file} unreadable: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  let d: Record<string, unknown>
  try {
    d = JSON.parse(text)
  } catch {
    throw new ManifestError(`delta ${file} is not valid JSON`)
  }
  if (typeof d !== 'object' || d === null || d.format !== 'extfs-delta' || typeof d.image !== 'string' || !Number.isSafeInteger(d.seq) ||
      typeof d.from !== 'string' || typeof d.to !== 'string' || !CONFIG_ID_RE.test(d.to)) {
    throw new ManifestError(`delta ${file} is not an extfs-delta with image, seq, from and to`)
  }
  return { image: d.image, seq: d.seq as number, from: d.from, to: d.to }
}
