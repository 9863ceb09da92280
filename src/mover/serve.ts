// Serving a view in this process until it is unmounted or signalled.
import fs from 'node:fs'
import type { Logger } from 'pino'
import { loadImage, LoadOptions } from './load'
import { checkMountpoint, requireFuse, requireRoot } from './checks'
import { FrozenView } from '../view/view'
import type { ViewEngine } from '../view/engine'
import { FuseEngine } from '../fuse/adapter'
import { NativeEngine } from '../engine/native-engine'
import type { LoadedImage } from './load'
import { isMountpoint } from '../mapping/mountinfo'
import { clearState, saveReport, saveState } from './state'
import { ChainFollower } from './follow'
import { ExtfsError, MountpointError } from '../errors'
import { ExitCode } from '../cli/exit-codes'

export interface ServeOptions extends LoadOptions {
  manifestPath: string
  mountpoint: string
  allowOther: boolean
  /** Leave a report of tainted files in /run/extfs when stopping, for the `extfs backup` that started us. */
  report: boolean
  log: Logger
  /** Called once: undefined when the view serves, or the error that stopped it from serving. */
  onReady: (err?: Error) => void
}

/**
 * The native engine (C on libfuse3, src/engine/) serves by default; EXTFS_ENGINE=fuse-native selects
 * the first engine (every request in JS), kept as a reference and a fallback.
 */
function createEngine(image: LoadedImage, opts: ServeOptions): ViewEngine {
  const { log } = opts
  if (process.env.EXTFS_ENGINE === 'fuse-native') return new FuseEngine(new FrozenView(image.manifest, image.devices, image.config, log), log)
  const { manifest } = image
  const follower = new ChainFollower({
    image: manifest.configId,
    devices: manifest.devices,
    // Only when a delta arrives: a streamed manifest then reads its inodes once more (src/mover/load.ts).
    fileSizes: () => new Map(manifest.inodes.filter((i) => i.kind === 'file').map((i) => [i.ino, i.size])),
    recordFile: image.config.file,
    key: opts.key,
    deviceOverrides: opts.deviceOverrides,
    adopt: (d) => image.devices.push(d), // closed with the others once the view stopped
    note: (msg) => log.info({ mountpoint: opts.mountpoint }, msg),
  })
  const engine = new NativeEngine(manifest, image.devices, follower, log)
  follower.attach(engine)
  return engine
}

// How often the view checks that nobody unmounted it behind its back (plain `umount`).
const MOUNT_POLL_MS = 250

/** Resolves when the view has been unmounted (by signal, `extfs umount` or plain umount). */
export async function serve(opts: ServeOptions): Promise<void> {
  const { log } = opts
  let engine: ViewEngine | undefined
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
    image = loadImage(opts.manifestPath, opts)
    engine = createEngine(image, opts)
    try {
      await engine.mount(mountpoint, { fsname: `extfs:${image.manifest.configId}`, allowOther: opts.allowOther })
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
    opts.onReady(err as Error)
    return
  }

  saveState({ pid: process.pid, mountpoint, manifest: opts.manifestPath })
  log.info({ mountpoint, manifest: opts.manifestPath, configId: image.manifest.configId, devices: image.devices.map((d) => `${d.id}=${d.path}`) }, 'serving frozen view')
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
      const tainted = engine instanceof NativeEngine ? engine.taintedFiles() : []
      if (opts.report) saveReport(mountpoint, { pid: process.pid, tainted })
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
