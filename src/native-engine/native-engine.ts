// The native engine: the view served in C on libfuse3's low-level API (native/view/). C packs the
// manifest into tables in a file once (mapped-tables.ts), JS mounts them, and then only answers two
// rare calls from C: "judge the config-ID record, it changed (or the lease expired)" and "log this
// refused open / failed read". Requests never reach JS.
import { promises as fsp, writeFileSync } from 'node:fs'
import type { Logger } from 'pino'
import type { Extent, Manifest } from '../manifest/types'
import type { RawDevice } from '../device/reader'
import type { ConfigCheck } from '../configid/record'
import type { MountOptions, Shard, ViewEngine } from '../view/engine'
import { splitDev } from '../mapping/blockdev'
import { mappedTablesOf, type IndexPaths, type MappedTables } from './mapped-tables'
import { tablesOfManifest } from './v1-manifest'
import { packDelta, type DeltaEntry } from './delta-tables'
import { viewAddon, type Answer, type EngineEvent, type PrefetchStats, type SessionHandle, type ViewStats, type TablesHandle } from './addon'
import { Refusals, type RefusalSummary } from '../view/refusals'

/**
 * Readahead window of the view's backing device info, in KiB. The kernel starts FUSE mounts at
 * 128 KiB, which caps sequential reads at 128 KiB requests; a larger window lets the kernel send
 * 1 MiB requests (max_pages) and keep several in flight on the session's worker threads.
 */
const READAHEAD_KB = 16384

/**
 * Serving keeps the process alive (two threadsafe functions stay referenced) until unmount() has
 * resolved; then nothing of the engine is left. While mounted, the serving process's JS thread must
 * not open files in the view synchronously (fs.*Sync): an open may wait for this thread to judge a
 * changed config-ID record, and would be refused after 5 s. Asynchronous calls are fine.
 */
export class NativeEngine implements ViewEngine {
  readonly rootIno: number
  /** The tables the C loader wrote into a file, mapped (the engine shares the mapping at mount). */
  private readonly mapped: MappedTables
  private readonly paths: IndexPaths
  private readonly deviceIds: string[]
  private session?: SessionHandle
  private unmounting?: Promise<void>
  /** taintedFiles() once unmounted: the list as it stood when unmount() was called. */
  private lastTainted: string[] = []
  /** eventsLost() as of the last look, kept once unmounted. */
  private lostEvents = 0
  /** Opens and reads refused since mount (stale, released, lease expired), and reads that failed. */
  private readonly refusals = new Refusals()
  /** Inode indexes of files whose POSIX ACL a reader asked for and could not have (too large for the kernel). */
  private readonly unservedAcls = new Set<number>()

  constructor(
    private readonly manifest: Manifest,
    private readonly devices: RawDevice[],
    private readonly config: ConfigCheck,
    private readonly log: Logger,
  ) {
    // A manifest loaded by the mover arrives in mapped tables (src/mover/load.ts); one made of
    // objects (tests) goes through the same C loader here.
    this.mapped = mappedTablesOf(manifest) ?? tablesOfManifest(manifest)
    viewAddon().setTablesDevices(this.mapped.handle, devices.map((d) => d.fd))
    this.paths = this.mapped
    this.deviceIds = devices.map((d) => d.id)
    this.rootIno = manifest.root
  }

  async mount(mountpoint: string, opts: MountOptions): Promise<void> {
    if (this.session) throw new Error(`view already mounted`)
    const addon = viewAddon()
    const tables = this.mapped.handle
    const options = ['ro', 'default_permissions', `fsname=${escapeOption(opts.fsname)}`, 'subtype=extfs']
    if (opts.allowOther) options.push('allow_other')
    this.session = addon.mount(tables, this.config.file, mountpoint, options.join(','),
      (answer) => this.judge(answer), (ev) => this.report(ev), Math.floor(opts.leaseMs ?? -1), opts.prefetchWindowBytes ?? -1,
      opts.shard?.index ?? 0, opts.shard?.count ?? 0)
    this.log.debug({ mountpoint, tables: this.mapped.loaded, bytes: this.mapped.loaded.tablesBytes, shard: opts.shard }, 'native engine mounted')
    try {
      // Answered once the kernel finished FUSE_INIT with the session thread: the view serves.
      const st = await fsp.stat(mountpoint)
      if (st.ino !== this.rootIno) throw new Error(`mount on ${mountpoint} answers with inode ${st.ino}, not the view's root ${this.rootIno}`)
      this.raiseReadahead(st.dev)
    } catch (err) {
      await this.unmount().catch(() => undefined)
      throw err
    }
    // Mapped tables are checked whole by mount() only: their ACLs are looked at once it has.
    const largeAcls = this.filesWithLargeAcls(tables, opts.shard)
    if (largeAcls.files.length > 0) {
      const { files, limit } = largeAcls
      this.log.warn({ mountpoint, count: files.length, files: files.slice(0, NAMED_AT_MOUNT), limit },
        `${files.length} file(s) hold POSIX ACLs larger than the kernel passes through FUSE (${limit} bytes): reading them fails (E2BIG), and so does an extfs backup that asks for them`)
    }
  }

  /** Paths of the files the view shows holding a POSIX ACL no reader of it can have, and the kernel's limit. */
  private filesWithLargeAcls(tables: TablesHandle, shard: Shard | undefined): { files: string[]; limit: number } {
    const { limit, acls } = viewAddon().largeAcls(tables)
    const shown = shard && acls.length > 0 ? viewAddon().shardVisible(tables, shard.index, shard.count) : undefined
    const indexes = [...new Set(acls.map((a) => a.index))].filter((index) => shown === undefined || shown[index] === 1)
    return { files: indexes.map((index) => this.paths.path(index)), limit }
  }

  unmount(): Promise<void> {
    const session = this.session
    if (!session) return Promise.resolve()
    if (!this.unmounting) this.lastTainted = this.taintedFiles()
    this.unmounting ??= viewAddon().unmount(session).then(
      () => {
        this.lostEvents = viewAddon().eventsLost(session) // the events of the last requests included
        this.session = undefined
        this.unmounting = undefined
      },
      (err: Error) => {
        this.unmounting = undefined
        throw err
      },
    )
    return this.unmounting
  }

  /**
   * Replace the extent lists of `files` and add `newDevices`, atomically for each file: a read sees
   * the old map or the new one, never a mix; reads that start after this returns use the new one
   * (cached pages are dropped). Extents' `device` indexes the view's devices with `newDevices`
   * appended; their fds must stay open until unmount() resolved (the caller closes them). Replacing
   * a file's content by `inline` data is refused (throws): the C engine serves inline content from
   * the immutable data blob only, and extent-less relocations of such tiny files do not happen.
   * Throws, changing nothing, when a file is not a regular file with extents of this image or the
   * delta is malformed. A file already read is tainted until read again in full (taintedFiles()).
   */
  applyDelta(files: { ino: number; extents?: Extent[]; inline?: string }[], newDevices: RawDevice[]): void {
    const session = this.session
    if (!session || this.unmounting) throw new Error('applyDelta: the view is not mounted')
    const entries: DeltaEntry[] = files.map((f) => {
      if (f.inline !== undefined) throw new Error(`applyDelta: inode ${f.ino}: replacing a file's content by inline data is not supported by the native engine`)
      const index = this.paths.index(f.ino)
      if (index < 0) throw new Error(`applyDelta: inode ${f.ino} is not in the image`)
      return { index, extents: f.extents ?? [] }
    })
    const delta = packDelta(entries, newDevices.map((d) => d.size))
    viewAddon().applyDelta(session, delta, newDevices.map((d) => d.fd))
    this.deviceIds.push(...newDevices.map((d) => d.id))
    this.log.info({ generation: viewAddon().generation(session), files: files.length, devices: newDevices.map((d) => d.id), bytes: delta.length }, 'delta applied')
  }

  /** Size of the regular file numbered `ino`, from the mounted tables; undefined when there is none. */
  fileSize(ino: number): number | undefined {
    if (!this.session) throw new Error('fileSize: the view is not mounted')
    const index = this.paths.index(ino)
    const size = index < 0 ? -1 : viewAddon().fileSize(this.session, index)
    return size < 0 ? undefined : size
  }

  /**
   * Paths (first name) of files read under a superseded map and not re-read in full since. Once
   * unmounted: the list as of the unmount() call (a umount only succeeds with no file open).
   */
  taintedFiles(): string[] {
    if (!this.session) return [...this.lastTainted]
    return viewAddon().tainted(this.session).map((index) => this.paths.path(index))
  }

  /** What the view served since mount, and the image's totals (native/view/stats.c). */
  viewStats(): ViewStats {
    if (!this.session) throw new Error('viewStats: the view is not mounted')
    return viewAddon().viewStats(this.session)
  }

  /** What the prefetch of small files did since mount (native/view/prefetch.c). */
  prefetchStats(): PrefetchStats {
    if (!this.session) throw new Error('prefetchStats: the view is not mounted')
    return viewAddon().prefetchStats(this.session)
  }

  /** Map generation: 0 at mount, +1 per applied delta. */
  generation(): number {
    if (!this.session) throw new Error('generation: the view is not mounted')
    return viewAddon().generation(this.session)
  }

  /**
   * Serve opens and reads without asking the config check for `ms` more milliseconds (a lease from
   * `extfs serve`); 0 sends every open and read to it; ms < 0: no lease, the record stamp decides.
   */
  setLease(ms: number): void {
    if (!this.session || this.unmounting) return
    viewAddon().setLease(this.session, Math.floor(ms))
  }

  /** Opens and reads refused or failed since mount, and why the first was: an `extfs backup` with any is not a clean one. */
  refusedRequests(): RefusalSummary {
    const summary = this.refusals.summary()
    if (this.session) this.lostEvents = viewAddon().eventsLost(this.session)
    // A lost event may have been a refused open or a failed read: count each as a refusal, so that
    // a backup is never judged clean without having heard of everything.
    if (this.lostEvents === 0) return summary
    const lost = `${this.lostEvents} event(s) the view could not deliver (a burst of refused opens, failed reads or ACL requests)`
    return { ...summary, count: summary.count + this.lostEvents, first: summary.first ?? lost }
  }

  /**
   * Paths of the files whose POSIX ACL a reader asked for and the kernel could not pass (larger than
   * its one-page buffer): metadata an `extfs backup` lacks. Each file once, in the order first asked.
   */
  unservedMetadata(): string[] {
    return [...this.unservedAcls].map((index) => this.paths.path(index))
  }

  /**
   * Called from C (JS thread) when the record changed since the last "ok", or the lease expired: the
   * config check decides (it may follow a delta, or ask the initiator first).
   */
  private judge(answer: Answer): void {
    const failed = (err: unknown) => answer(false, `config-ID check failed: ${(err as Error).message}`)
    try {
      const v = this.config.check()
      if (v instanceof Promise) v.then((r) => answer(r.ok, r.ok ? undefined : r.reason), failed)
      else answer(v.ok, v.ok ? undefined : v.reason)
    } catch (err) {
      failed(err)
    }
  }

  /** Log lines for what C refused or failed; the same fields and messages as FrozenView. */
  private report(ev: EngineEvent): void {
    if (ev.kind === 'acl') return this.reportUnservedAcl(ev)
    const path = this.paths.path(ev.index)
    if (!this.refusals.note(ev.kind, ev.index, ev.reason, path)) return
    const ino = this.paths.ino(ev.index)
    if (ev.kind === 'open') {
      this.log.warn({ op: 'open', path, ino, reason: ev.reason }, 'open refused: frozen image not current')
    } else if (ev.kind === 'read-refused') {
      this.log.warn({ op: 'read', path, ino, offset: ev.offset, reason: ev.reason }, 'read refused: frozen image not current')
    } else {
      this.log.error({ op: 'read', path, ino, offset: ev.offset, device: this.deviceIds[ev.device] ?? ev.device, deviceOffset: ev.deviceOffset, err: ev.reason }, 'read failed')
    }
  }

  /** Once per file: a reader asks again (getfacl, tar: up to three times each), the answer stays E2BIG. */
  private reportUnservedAcl(ev: EngineEvent): void {
    if (this.unservedAcls.has(ev.index)) return
    this.unservedAcls.add(ev.index)
    this.log.error({ op: 'getxattr', path: this.paths.path(ev.index), ino: this.paths.ino(ev.index), xattr: ev.reason, size: ev.size, asked: ev.asked },
      'ACL not served: larger than the kernel passes through FUSE (the reader got E2BIG)')
  }

  private raiseReadahead(dev: number): void {
    const { major, minor } = splitDev(dev) // FUSE mounts have major 0
    const file = `/sys/class/bdi/${major}:${minor}/read_ahead_kb`
    try {
      writeFileSync(file, `${READAHEAD_KB}\n`)
    } catch (err) {
      this.log.debug({ file, err: (err as Error).message }, 'cannot raise readahead; reads stay at 128 KiB')
    }
  }
}

/** How many files the mount's warning names (the count says how many there are). */
const NAMED_AT_MOUNT = 5

/** libfuse splits -o at commas; a backslash escapes one. */
function escapeOption(value: string): string {
  return value.replace(/[\\,]/g, (c) => `\\${c}`)
}
