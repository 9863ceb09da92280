// A filesystem inside an image file that itself lives on another (outer) filesystem: the second level
// of a two-level stack, as VM images are stored. The outer one comes from loopfs.ts. We only detach the
// loop devices we attached, by name, and tear down inner before outer: the exit handlers here are
// prepended so they run before loopfs.ts's.
import { spawnSync } from 'node:child_process'
import { promises as fsp, rmdirSync } from 'node:fs'
import { run, runOk } from './exec'
import { cleanupAtExit, isMounted, loopBackingFile, unmountTestFs, unmountTestFsSync, waitForPath } from './loopfs'

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

interface State {
  image: string
  loopDevice?: string
  partitioned?: boolean
  mountpoint?: string
  mounted?: boolean
}

const live = new Set<State>()

/** Create `image` (sparse, sizeMiB), attach it, optionally give it one GPT partition, make ext4, mount. */
export async function createNestedFs(image: string, opts: { sizeMiB: number; partition?: boolean }): Promise<NestedFs> {
  await fsp.writeFile(image, '')
  await fsp.truncate(image, opts.sizeMiB * 1024 * 1024)
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
      await runOk('partx', ['-a', st.loopDevice])
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
  if (st.mounted && st.mountpoint) st.mounted = await unmountTestFs(st.mountpoint, problems)
  // Only touch the device if it is still ours (after a crash the number may have been reused).
  if (!st.mounted && st.loopDevice && loopBackingFile(st.loopDevice) === st.image) {
    if (st.partitioned) await run('partx', ['-d', st.loopDevice])
    const r = await run('losetup', ['-d', st.loopDevice])
    if (r.code !== 0) problems.push(`losetup -d ${st.loopDevice}: ${r.stderr.trim()}`)
  }
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
    const sh = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore', timeout: 15_000 })
    if (st.mounted && st.mountpoint) unmountTestFsSync(st.mountpoint)
    if (st.loopDevice && loopBackingFile(st.loopDevice) === st.image) {
      if (st.partitioned) sh('partx', ['-d', st.loopDevice])
      sh('losetup', ['-d', st.loopDevice])
    }
    try {
      if (st.mountpoint && !isMounted(st.mountpoint)) rmdirSync(st.mountpoint)
    } catch {
      // best effort
    }
    live.delete(st)
  }
}
