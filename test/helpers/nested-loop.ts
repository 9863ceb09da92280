// A filesystem inside an image file that itself lives on another (outer) filesystem: the second level
// of a two-level stack, as VM images are stored. The outer one comes from loopfs.ts. We only detach the
// loop devices we attached, by name, and tear down inner before outer: the exit handlers here are
// prepended so they run before loopfs.ts's.
import { promises as fsp, rmdirSync } from 'node:fs'
import { runOk } from './exec'
import { writeInterleaved } from './populate'
import { cleanupAtExit, isMounted, releaseLoopFs, releaseLoopFsSync, waitForPath, type LoopState } from './loopfs'

export interface NestedFs {
  /** The image file (on the outer filesystem), as a real path: the kernel reports it resolved. */
  image: string
  /** The loop device attached to `image`. */
  loopDevice: string
  /** Where the filesystem is: loopDevice, or its first partition. */
  fsDevice: string
  partitioned: boolean
  /** A mkdtemp directory /tmp/extfs-inner-*, the mount point itself. */
  mountpoint: string
}

interface State extends LoopState {
  image: string
}

const live = new Set<State>()

/**
 * Create `image` (sparse, sizeMiB), attach it, optionally give it one GPT partition, make ext4, mount.
 * `fragmented`: the image is written in full first, in 1 MiB chunks alternating with a scratch file
 * removed afterwards, so it lies in many extents on the outer filesystem (xfs_fsr then moves it).
 */
export async function createNestedFs(image: string, opts: { sizeMiB: number; partition?: boolean; fragmented?: boolean }): Promise<NestedFs> {
  if (opts.fragmented) {
    const filler = `${image}.filler`
    await writeInterleaved([{ file: image, seed: 1 }, { file: filler, seed: 2 }], opts.sizeMiB, 1024 * 1024)
    await fsp.rm(filler)
  } else {
    await fsp.writeFile(image, '')
    await fsp.truncate(image, opts.sizeMiB * 1024 * 1024)
  }
  return setUp(image, { partition: opts.partition ?? false, fresh: true, readOnly: false })
}

/**
 * Attach an existing image (a reflink clone, say) READ-ONLY and mount its filesystem read-only. `noload`:
 * a clone of a live ext4 has a journal to replay, which a read-only device cannot take.
 */
export async function attachReadOnly(image: string, opts: { partitioned: boolean }): Promise<NestedFs> {
  return setUp(image, { partition: opts.partitioned, fresh: false, readOnly: true })
}

async function setUp(image: string, o: { partition: boolean; fresh: boolean; readOnly: boolean }): Promise<NestedFs> {
  const st: State = { image }
  register(st)
  try {
    st.loopDevice = (await runOk('losetup', [...(o.readOnly ? ['-r'] : []), '-f', '--show', image])).stdout.trim()
    let fsDevice = st.loopDevice
    if (o.partition) {
      if (o.fresh) {
        // sfdisk cannot make the kernel re-read the table (no partition scan here); partx tells it.
        await runOk('sfdisk', ['-q', st.loopDevice], { input: 'label: gpt\nstart=2048, type=linux\n' })
      }
      st.partitioned = true
      // -u adds what the kernel lacks and is content when it has it already (-a failed a CI run with
      // "error adding partition 1").
      await runOk('partx', ['-u', st.loopDevice])
      fsDevice = `${st.loopDevice}p1`
      await waitForPath(fsDevice)
    }
    if (o.fresh) await runOk('mkfs.ext4', ['-q', '-F', '-b', '4096', fsDevice])
    st.mountpoint = await fsp.mkdtemp('/tmp/extfs-inner-')
    await runOk('mount', [...(o.readOnly ? ['-o', 'ro,noload'] : []), fsDevice, st.mountpoint])
    st.mounted = true
    return { image, loopDevice: st.loopDevice, fsDevice, partitioned: o.partition, mountpoint: st.mountpoint }
  } catch (e) {
    await destroyState(st)
    throw e
  }
}

/** Unmount, drop partitions, detach, remove the mount point; returns the problems met (empty: all gone). */
export async function destroyNestedFs(n: NestedFs): Promise<string[]> {
  const st = [...live].find((s) => s.loopDevice === n.loopDevice && s.image === n.image)
  return st ? destroyState(st) : []
}

async function destroyState(st: State): Promise<string[]> {
  const problems: string[] = []
  await releaseLoopFs(st, problems)
  if (!st.mounted && st.mountpoint) await fsp.rmdir(st.mountpoint).catch(() => {})
  live.delete(st)
  return problems
}

// Last resort at exit or on a signal, synchronous; prepended so inner goes before loopfs.ts's outer.
let installed = false
function register(st: State): void {
  live.add(st)
  if (installed) return
  installed = true
  cleanupAtExit(cleanupSync, { first: true })
}

function cleanupSync(): void {
  for (const st of [...live].reverse()) {
    releaseLoopFsSync(st)
    try {
      if (st.mountpoint && !isMounted(st.mountpoint)) rmdirSync(st.mountpoint)
    } catch {
      // best effort
    }
    live.delete(st)
  }
}
