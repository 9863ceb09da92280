// The images `extfs serve` answers for, kept in step with the files that `extfs export`, `remap` and
// `release` write (manifest, config-ID record, delta files): the record is the truth, the SQLite state
// (state.ts) remembers what was published from it, and long polls wait here for a change.
//
// What an image is answered as (docs/remap.md, "serve's state"): released when the record says so or
// the state remembers it released (released is final: no restored state or record brings an image
// back); current only when the record is readable, valid and says current and the state does not
// remember it released; otherwise unknown, which movers treat as not current.
import fs from 'node:fs'
import path from 'node:path'
import type { Logger } from 'pino'
import { deltaPathOf, fileStamp, readRecord, recordPath } from '../configid/record'
import { readManifestHeader } from '../manifest/stream'
import type { ManifestHeader } from '../manifest/types'
import { CONFIG_ID } from '../manifest/validate'
import { DEFAULT_MAX_DELTA_BYTES } from '../delta/io'
import { ExitCode, ExtfsError, ManifestError } from '../errors'
import type { ServeMetrics } from './metrics'
import { imageNameOf, type ConfigAnswer, type ConfigAnswerState } from './protocol'
import { isStateDamaged, type DeltaRow, type ServeState } from './state'

/** How often records are checked by stat in case fs.watch missed an event (NFS, overlay), ms. */
export const RECORD_POLL_MS = 2_000

export interface Image {
  name: string
  manifestPath: string
  recordFile: string
  c0: string
  /** stat identity of the manifest and record when last read: a change means read again. */
  manifestStamp: string
  recordStamp: string
  /** Why the record, when last read, could not prove the image current (unreadable, invalid); undefined when it could. */
  doubt?: string
  /** The record's stamp when it last said current for an image released (logged once per record). */
  refusedStamp?: string
  /** Long polls waiting for this image's config to change. */
  waiters: Set<() => void>
}

export class ImageRegistry {
  private readonly images = new Map<string, Image>()
  private readonly watchers: fs.FSWatcher[] = []
  private readonly pendingSync = new Map<string, NodeJS.Timeout>()
  private pollTimer?: NodeJS.Timeout
  private closing = false

  constructor(manifests: string[], private readonly key: Buffer, private readonly state: ServeState, private readonly log: Logger, private readonly metrics: ServeMetrics) {
    for (const m of manifests) this.add(path.resolve(m))
  }

  get(name: string): Image | undefined {
    return this.images.get(name)
  }

  names(): string[] {
    return [...this.images.keys()].sort()
  }

  all(): Image[] {
    return [...this.images.values()]
  }

  /** Watches the records' and manifests' directories, and polls them as a fallback. */
  start(): void {
    this.watch()
    this.pollTimer = setInterval(() => this.pollRecords(), RECORD_POLL_MS)
  }

  /** Stops watching and answers every long poll with the state as it is. */
  close(): void {
    this.closing = true
    clearInterval(this.pollTimer)
    for (const t of this.pendingSync.values()) clearTimeout(t)
    for (const w of this.watchers) w.close()
    for (const img of this.images.values()) this.wake(img)
  }

  /** The current config of `img` as a ConfigAnswer, with `heldMs` counted from `started` (performance.now()). */
  answer(img: Image, leaseMs: number, started: number): ConfigAnswer {
    const row = this.row(img)
    return {
      image: img.c0, configId: row.configId, state: row.state, reason: row.reason, deltas: this.state.deltas(img.name).map((d) => d.seq),
      leaseMs, heldMs: Math.floor(performance.now() - started),
    }
  }

  /** What `img` is answered as: its config ID, and current, released or unknown (with why). */
  row(img: Image): { configId: string; state: ConfigAnswerState; reason?: string } {
    const row = this.state.image(img.name)!
    if (row.state === 'released' || img.doubt === undefined) return { configId: row.configId, state: row.state }
    return { configId: row.configId, state: 'unknown', reason: img.doubt }
  }

  /** Published delta `seq` of `img`: its file, or its bytes kept in the state. */
  delta(img: Image, seq: number): DeltaRow | undefined {
    return this.state.delta(img.name, seq)
  }

  /** How many published deltas lead to `configId` (0: the manifest's); undefined when none does. */
  seqOf(img: Image, configId: string): number | undefined {
    if (configId === img.c0) return 0
    return this.state.deltas(img.name).find((d) => d.to === configId)?.seq
  }

  /**
   * Brings the state of `img` up to its record (the record is the truth: export, remap and release
   * write it): new deltas, a new config ID, released. Wakes the long polls when anything changed.
   * A delta that cannot be read or does not continue the chain is not published; the config ID still
   * is, so movers find the chain broken and refuse opens rather than serve the old map.
   */
  sync(img: Image): void {
    const before = this.state.image(img.name)!.configId
    const added = this.syncNow(img)
    const after = this.state.image(img.name)!
    this.metrics.published(img.name, { configIdChanged: after.configId !== before, deltas: this.state.deltas(img.name).length, added, released: after.state === 'released' })
  }

  /** Records whether the record proved `img` current; a change is logged once and wakes the long polls. */
  private setDoubt(img: Image, doubt: string | undefined): void {
    if (doubt === img.doubt) return
    img.doubt = doubt
    if (doubt !== undefined) this.log.error({ image: img.name, err: doubt }, 'record does not prove the image current: answering unknown (released if the state remembers it released)')
    else this.log.info({ image: img.name }, 'record readable again')
    this.wake(img)
  }

  /** sync without the metrics; returns how many deltas it published. */
  private syncNow(img: Image): number {
    this.syncManifest(img)
    img.recordStamp = fileStamp(img.recordFile)
    let record
    try {
      record = readRecord(img.recordFile)
    } catch (err) {
      this.setDoubt(img, (err as Error).message)
      return 0
    }
    this.setDoubt(img, undefined)
    const row = this.state.image(img.name)!
    if (row.state === 'released' && record.state !== 'released') {
      if (img.recordStamp !== img.refusedStamp) this.log.error({ image: img.name, configId: record.configId }, 'record says current but this image was released: released is final, answering released')
      img.refusedStamp = img.recordStamp
      return 0
    }
    const known = this.state.deltas(img.name)
    const names = record.deltas ?? []
    let keep = 0
    while (keep < known.length && keep < names.length && known[keep]!.path === deltaPathOf(img.recordFile, names[keep]!)) keep++
    const { added, end } = this.readNewDeltas(img, names, keep, keep === 0 ? img.c0 : known[keep - 1]!.to)
    const dropped = known.length - keep
    if (dropped === 0 && added.length === 0 && record.configId === row.configId && record.state === row.state) return 0
    if (record.state === 'current' && end !== record.configId) {
      this.log.error({ image: img.name, chainEnd: end, configId: record.configId }, 'delta chain does not reach the record\'s config ID: movers will refuse opens until it does')
    }
    this.state.publish(img.name, record.configId, record.state, added, dropped > 0 ? keep + 1 : undefined) // row is not released: see above
    this.log.info({ image: img.name, from: row.configId, configId: record.configId, state: record.state, deltas: keep + added.length }, 'config changed')
    this.wake(img)
    return added.length
  }

  private add(manifestPath: string): void {
    const name = imageNameOf(manifestPath)
    const other = this.images.get(name)
    if (other) throw new ExtfsError(ExitCode.Usage, `${manifestPath} and ${other.manifestPath} would both be served as image ${name}: rename one`)
    const header = readManifestHeader(manifestPath, this.key)
    const img: Image = {
      name, manifestPath, recordFile: recordPath(manifestPath, header.configRecord), c0: header.configId,
      manifestStamp: fileStamp(manifestPath), recordStamp: '', waiters: new Set(),
    }
    this.state.registerImage(name, manifestPath, img.c0)
    this.images.set(name, img)
    this.metrics.image(name)
    this.sync(img)
    const row = this.state.image(name)!
    this.log.info({ image: name, manifest: manifestPath, c0: img.c0, configId: row.configId, state: row.state, deltas: this.state.deltas(name).length }, 'image')
  }

  /** A manifest exported again under the same name starts a new chain. */
  private syncManifest(img: Image): void {
    const mStamp = fileStamp(img.manifestPath)
    if (mStamp === img.manifestStamp) return
    img.manifestStamp = mStamp
    try {
      const header = readManifestHeader(img.manifestPath, this.key)
      if (header.configId === img.c0) return
      this.log.info({ image: img.name, from: img.c0, to: header.configId }, 'manifest replaced: new image')
      img.c0 = header.configId
      img.recordFile = recordPath(img.manifestPath, header.configRecord)
      this.state.registerImage(img.name, img.manifestPath, img.c0)
      this.wake(img)
    } catch (err) {
      this.log.error({ image: img.name, err: (err as Error).message }, 'manifest unreadable: still serving the last one read')
    }
  }

  /** The record's deltas from position `keep` on that continue the chain at `end`; stops at the first that does not. */
  private readNewDeltas(img: Image, names: string[], keep: number, end: string) {
    const added: { seq: number; from: string; to: string; path: string }[] = []
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
        this.log.error({ image: img.name, err: (err as Error).message }, 'delta not published')
        break
      }
    }
    return { added, end }
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
        w.on('error', (err) => this.log.warn({ dir, err: err.message }, 'watch failed: relying on polling'))
        this.watchers.push(w)
      } catch (err) {
        this.log.warn({ dir, err: (err as Error).message }, 'cannot watch: relying on polling')
      }
    }
  }

  /** Renames come as several events; one sync a moment later covers them all. */
  private syncSoon(img: Image): void {
    if (this.closing || this.pendingSync.has(img.name)) return
    this.pendingSync.set(img.name, setTimeout(() => {
      this.pendingSync.delete(img.name)
      this.syncFromTimer(img)
    }, 20))
  }

  private pollRecords(): void {
    for (const img of this.images.values()) {
      if (fileStamp(img.recordFile) !== img.recordStamp || fileStamp(img.manifestPath) !== img.manifestStamp) this.syncFromTimer(img)
    }
  }

  /**
   * sync from a timer, where a throw would end the process with a stack trace: a damaged state stops
   * serve with its one line and exit 13 instead (state.onDamage: run.ts). Anything else is a bug, and thrown.
   */
  private syncFromTimer(img: Image): void {
    try {
      this.sync(img)
    } catch (err) {
      if (!isStateDamaged(err)) throw err
    }
  }
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
      typeof d.from !== 'string' || typeof d.to !== 'string' || !CONFIG_ID.test(d.to)) {
    throw new ManifestError(`delta ${file} is not an extfs-delta with image, seq, from and to`)
  }
  return { image: d.image, seq: d.seq as number, from: d.from, to: d.to }
}
