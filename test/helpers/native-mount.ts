// Mount a frozen image with the native engine in the calling process, and export a populated loop
// filesystem: shared by the native engine's end-to-end files (native-engine, native-engine-xfs,
// push-ahead), which are split so that scripts/sanitize runs them side by side.
import type { Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import pino from 'pino'
import { withLoopFs, type LoopFsOptions } from './loopfs'
import { populateEveryKind } from './populate'
import type { Tree } from './tree'
import { run } from './exec'
import { extfs, release, scratchDir } from './extfs'
import type { LoadedImage } from '../../src/mover/load'
import { NativeEngine } from '../../src/native-engine/native-engine'
import type { Manifest } from '../../src/manifest/types'
import type { MountOptions } from '../../src/view/engine'

export const NS = 1 // the native engine serves times with nanoseconds

export const isSocket = (tree: Tree) => (rel: string) => tree.get(rel)?.kind === 'socket'

export interface Mounted {
  engine: NativeEngine
  mnt: string
  /** Unmount (retrying while busy), falling back to a lazy umount so nothing is left behind. */
  close(): Promise<void>
}

/**
 * Mount `manifest` (or an edited copy of its content) with the native engine on a fresh directory;
 * `opts` as the engine's mount options (the prefetch window, say).
 */
export async function mountNative(root: string, name: string, image: LoadedImage, logFile: string, manifest: Manifest = image.manifest,
  opts: Partial<MountOptions> = {}): Promise<Mounted> {
  const mnt = path.join(root, name)
  await fsp.mkdir(mnt, { recursive: true })
  const log = pino({ level: 'debug' }, pino.destination({ dest: logFile, sync: true, append: true }))
  const engine = new NativeEngine(manifest, image.devices, image.config, log)
  await engine.mount(mnt, { fsname: `extfs:${manifest.configId}`, allowOther: false, ...opts })
  const close = async () => {
    for (let i = 0; i < 10; i++) {
      try {
        return await engine.unmount()
      } catch {
        await new Promise((r) => setTimeout(r, 300))
      }
    }
    await run('umount', ['-l', mnt]) // last resort; the engine then finds it unmounted and ends
    await engine.unmount()
  }
  return { engine, mnt, close }
}

/** Export (freeze) a loop filesystem holding 3,000 entries in one directory and every kind of file. */
export async function exportPopulated(t: Test, opts: LoopFsOptions, body: (data: string, manifest: string, state: string) => Promise<void>): Promise<void> {
  const state = await scratchDir(t, 'extfs-native-')
  await withLoopFs(opts, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'many'), { recursive: true })
    // Enough entries that a listing takes many readdir requests, with long and non-ASCII names.
    for (let i = 0; i < 3000; i++) await fsp.writeFile(path.join(data, 'many', `${'ü'.repeat(i % 7)}entry-${i}-${'n'.repeat(i % 90)}`), `${i}\n`)
    await populateEveryKind(data, { big: true })
    const manifest = path.join(state, 'm.json')
    try {
      const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      await body(data, manifest, state)
    } finally {
      await release(manifest)
    }
  })
}
