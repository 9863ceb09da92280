// Serving a view in this process until it is unmounted or signalled.
import fs from 'node:fs'
import type { Logger } from 'pino'
import { loadImage, LoadOptions } from './load'
import { checkMountpoint, requireFuse, requireRoot } from './checks'
import { fuseNativeSelected, shardName, type Shard, type ViewEngine } from '../view/engine'
import { NativeEngine } from '../native-engine/native-engine'
import type { LoadedImage } from './load'
import { isMountpoint } from '../mapping/mountinfo'
import { clearState, REPORT_FILES, saveReport, saveState, type ViewState } from './state'
import { ChainFollower } from './follow'
import { RemoteImage } from './remote'
import { serveStatus } from './control'
import { describeView, recordHealth } from './view-status'
import { ExtfsError, MountpointError, ExitCode } from '../errors'

/** A mover following `extfs serve` instead of files on shared storage (src/mover/remote.ts). */
export interface RemoteSource {
  url: string
  ca?: Buffer
  /** The mover's cap on the initiator's lease, ms. */
  leaseCapMs?: number
}

export interface ViewRunOptions extends LoadOptions {
  /** The manifest file; with `remote`, the URL (for logs and state only). */
  manifestPath: string
  remote?: RemoteSource
  mountpoint: string
  allowOther: boolean
  /** The prefetch window of small files in bytes (0: off); absent: the engine's default. */
  prefetchWindowBytes?: number
  /** Serve this shard of the image alone (docs/shards.md); absent: the whole image. */
  shard?: Shard
  /** Leave a report of tainted files in /run/extfs when stopping, for the `extfs backup` that started us. */
  report: boolean
  log: Logger
  /** Called once: undefined when the view serves, or the error that stopped it from serving. */
  onReady: (err?: Error) => void
}

/** How the view follows its image: how to stop, and what the last look at the record said. */
interface Following {
  stop: () => void
  health: { released?: boolean; refused?: string }
}

/**
 * The native engine (C on libfuse3, src/native-engine/) serves by default; EXTFS_ENGINE=fuse-native selects
 * the first engine (every request in JS), kept as a reference and a fallback.
 */
interface Served {
  engine: ViewEngine
  /** The native engine's chain follower: also polled, so deltas and releases act between opens. */
  follower?: ChainFollower
}

async function createEngine(image: LoadedImage, opts: ViewRunOptions, remote?: RemoteImage): Promise<Served> {
  const { log } = opts
  if (fuseNativeSelected()) return { engine: await fuseNativeEngine(image, log) }
  const { manifest } = image
  const follower: ChainFollower = new ChainFollower({
    image: manifest.configId,
    devices: manifest.devices,
    dataChecksums: manifest.dataChecksums,
    fileSizes: () => ({ get: (ino): number | undefined => engine.fileSize(ino) }), // a delta arrives once the view is mounted
    recordFile: image.config.file,
    key: opts.key, // from serve as from shared storage: remap signs deltas with the key
    deviceOverrides: opts.deviceOverrides,
    adopt: (d) => image.devices.push(d), // closed with the others once the view stopped
    note: (msg) => log.info({ mountpoint: opts.mountpoint }, msg),
  })
  const engine: NativeEngine = new NativeEngine(manifest, image.devices, remote ? remote.guard(follower) : follower, log)
  follower.attach(engine)
  return { engine, follower }
}

/**
 * Imported only when selected: a process serving with the native engine never loads fuse-native (nor
 * libfuse2 through it).
 */
async function fuseNativeEngine(image: LoadedImage, log: Logger): Promise<ViewEngine> {
  const { FuseEngine } = await import('../fuse-native-engine/adapter')
  const { FrozenView } = await import('../fuse-native-engine/frozen-view')
  const { requireServable } = await import('../fuse-native-engine/limits')
  requireServable(image.manifest)
  return new FuseEngine(new FrozenView(image.manifest, image.devices, image.config, log), log)
}

/**
 * Shared storage: the record is looked at every MOUNT_POLL_MS besides on opens, so a delta is followed
 * and a release stops reads of open files without waiting for the next open. From serve: the mirror
 * is looked at whenever an answer changed it, and the lease follows the initiator's answers.
 */
function startFollowing(served: Served, opts: ViewRunOptions, state: ViewState, remote?: RemoteImage): Following {
  const { engine, follower } = served
  const following: Following = { stop: () => undefined, health: {} }
  if (!(engine instanceof NativeEngine) || !follower) return following
  const recordPosition = positionRecorder(follower, state, opts.log)
  let released = false
  const look = () => {
    const r = follower.poll()
    if (r.refused) opts.log.warn({ mountpoint: opts.mountpoint, reason: r.refused }, 'frozen image not current: opens are refused')
    if (!remote && r.released !== released) engine.setLease(r.released ? 0 : -1) // 0: every read asks, and is refused
    released = r.released
    following.health = r
    // Deltas an open followed since are recorded here too: every record change brings a look (the
    // mirror calls it after writing the record; on shared storage the next poll comes within 250 ms).
    recordPosition()
  }
  if (remote) {
    remote.attach(engine, look)
    look() // a chain mirrored at mount is followed now, as the first poll does on shared storage
    following.stop = () => remote.close()
    return following
  }
  recordPosition()
  const timer = setInterval(look, MOUNT_POLL_MS)
  following.stop = () => clearInterval(timer)
  return following
}

/**
 * Keeps the view's place in the config-ID chain in its state file whenever it moved: `extfs backup`
 * waits there for its view to have applied what its final remap published (src/mover/final-remap.ts).
 */
function positionRecorder(follower: ChainFollower, state: ViewState, log: Logger): () => void {
  let recorded: string | undefined
  return () => {
    if (follower.current === recorded) return
    try {
      saveState({ ...state, position: { configId: follower.current, seq: follower.applied } })
      recorded = follower.current
    } catch (err) {
      log.warn({ mountpoint: state.mountpoint, err: (err as Error).message }, 'cannot record the view\'s config ID; extfs backup will not see it')
    }
  }
}

// How often the view checks that nobody unmounted it behind its back (plain `umount`).
const MOUNT_POLL_MS = 250

/** Resolves when the view has been unmounted (by signal, `extfs umount` or plain umount). */
export async function runView(opts: ViewRunOptions): Promise<void> {
  const { log } = opts
  const startedAt = new Date()
  let engine: ViewEngine | undefined
  let served: Served | undefined
  let remote: RemoteImage | undefined
  let mountpoint = ''
  let image
  // Signals are taken from the start: the kernel serves the view (and a script may already send
  // SIGTERM) before this thread has finished its checks after mounting. Acted on once serving.
  let pendingStop: string | undefined
  let requestStop = (why: string) => void (pendingStop ??= why)
  process.on('SIGINT', () => requestStop('SIGINT'))
  process.on('SIGTERM', () => requestStop('SIGTERM'))
  try {
    requireRoot('mount')
    requireFuse()
    mountpoint = checkMountpoint(opts.mountpoint)
    if (opts.remote) {
      // The lease lives in the C engine: the fuse-native engine could not refuse a read on an expired one.
      if (fuseNativeSelected()) throw new ExtfsError(ExitCode.Usage, `mounting from ${opts.remote.url} needs the native engine (unset EXTFS_ENGINE)`)
      if (!opts.key) throw new ExtfsError(ExitCode.Usage, `mounting from ${opts.remote.url} needs --key (the key extfs serve was given)`)
      remote = await RemoteImage.open({ url: opts.remote.url, key: opts.key, ca: opts.remote.ca, leaseCapMs: opts.remote.leaseCapMs, log })
      // serve only serves manifests signed with its key; checked here as for a local file with --key.
      image = loadImage(remote.manifestPath, { key: opts.key, deviceOverrides: opts.deviceOverrides, recordFile: remote.recordFile, progress: opts.progress })
    } else {
      image = loadImage(opts.manifestPath, opts)
    }
    served = await createEngine(image, opts, remote)
    engine = served.engine
    try {
      await engine.mount(mountpoint, { fsname: `extfs:${image.manifest.configId}`, allowOther: opts.allowOther, leaseMs: remote?.leaseLeft(),
        prefetchWindowBytes: opts.prefetchWindowBytes, shard: opts.shard })
    } catch (err) {
      throw new ExtfsError(ExitCode.NoFuse, `FUSE mount on ${mountpoint} failed: ${(err as Error).message}`)
    }
    // The view serves once the kernel answers for the mountpoint with the image's root inode (use_ino).
    const st = await fs.promises.stat(mountpoint)
    if (st.ino !== engine.rootIno) throw new MountpointError(`mount on ${mountpoint} does not answer as the view`)
  } catch (err) {
    // The device fds may be closed only once nothing serves from them: while an unmount has not gone
    // through, the engine may still read them, and a reused fd number would serve foreign bytes.
    const stopped = engine ? await engine.unmount().then(() => true, () => false) : true
    if (stopped) for (const d of image?.devices ?? []) d.close()
    remote?.close()
    opts.onReady(err as Error)
    return
  }

  const state: ViewState = { pid: process.pid, mountpoint, manifest: opts.manifestPath }
  saveState(state)
  const following = startFollowing(served!, opts, state, remote)
  const stopStatus = serveStatus(mountpoint, () => describeView({ engine: engine!, follower: served!.follower, remote,
    health: served!.follower ? following.health : recordHealth(image.config),
    manifest: image.manifest, source: opts.manifestPath, mountpoint, startedAt, shard: opts.shard }), (err) => log.warn({ mountpoint, err: err.message }, 'view status socket failed; extfs status will call this view dead'))
  log.info({
    mountpoint, manifest: opts.manifestPath, configId: image.manifest.configId, devices: image.devices.map((d) => `${d.id}=${d.path}`),
    ...(opts.shard ? { shard: shardName(opts.shard) } : {}),
    ...(remote ? { leaseMs: Math.round(remote.leaseLeft()) } : {}),
  }, 'serving frozen view')
  opts.onReady()

  await new Promise<void>((resolve) => {
    let stopping = false
    const stop = async (why: string) => {
      if (stopping) return
      stopping = true
      try {
        await engine!.unmount()
      } catch (err) {
        log.error({ mountpoint, err: (err as Error).message }, 'unmount failed (busy?); still serving')
        stopping = false
        return
      }
      clearInterval(poll)
      following.stop()
      stopStatus()
      const tainted = engine!.taintedFiles()
      const refused = engine!.refusedRequests()
      const unserved = engine!.unservedMetadata?.() ?? []
      if (opts.report) {
        saveReport(mountpoint, { pid: process.pid, tainted, refused: refused.count, firstRefusal: refused.first, failedReads: refused.failedReads,
          unservedMetadata: { count: unserved.length, files: unserved.slice(0, REPORT_FILES) } })
      }
      if (tainted.length > 0) log.warn({ mountpoint, tainted }, 'files were read under a superseded map and not re-read')
      log.info({ mountpoint, why }, 'view unmounted')
      resolve()
    }
    requestStop = (why) => void stop(why)
    const poll = setInterval(() => {
      if (!isMountpoint(mountpoint)) void stop('unmounted externally')
    }, MOUNT_POLL_MS)
    if (pendingStop) void stop(pendingStop)
  })
  clearState(mountpoint, process.pid)
  for (const d of image.devices) d.close()
}
