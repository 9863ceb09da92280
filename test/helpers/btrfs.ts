// Throw-away btrfs filesystems spanning one or more loop devices, for end-to-end tests of the chunk
// mapping. Modeled on loopfs.ts: other agents share the machine's loop devices, so we only ever detach
// devices we attached (by name, after checking their backing file) and never `losetup -D`.
import { spawnSync } from 'node:child_process'
import { promises as fsp, rmSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, runOk } from './exec'
import { cleanupAtExit, isMounted, loopBackingFile, unmountTestFs, unmountTestFsSync, withTestResource } from './loopfs'

export type BtrfsProfile = 'single' | 'dup' | 'raid0' | 'raid1' | 'raid10' | 'raid1c3' | 'raid1c4'

export interface BtrfsOptions {
  /** Number of member devices (one loop device each). */
  devices: number
  data: BtrfsProfile
  metadata: BtrfsProfile
  /** Size of each member's sparse image; default 256 MiB (mkfs.btrfs wants ~110 MiB at least). */
  sizeMiB?: number
  mkfsArgs?: string[]
  /** Extra `mount -o` options (the device= list is added for you). */
  mountOptions?: string
}

export interface BtrfsFs {
  /** The loop devices we attached, in devid order as given to mkfs (devid = index + 1). */
  loopDevices: string[]
  /** The sparse images backing loopDevices, same order. */
  images: string[]
  mountpoint: string
  /** mkdtemp directory holding the images and the mountpoint. */
  tmpdir: string
}

/** What has been set up so far; cleanup undoes exactly these steps, also after a partial create. */
interface State {
  tmpdir: string
  /** Pairs of (image, loop device) we attached; cleanup checks the backing file before detaching. */
  attached: Array<{ image: string; loopDevice: string }>
  mountpoint?: string
  mounted?: boolean
}

/** Everything not yet destroyed; the exit/signal handlers clean these up as a last resort. */
export const btrfsRegistry = new Set<State>()

const MiB = 1024 * 1024

export async function createBtrfs(opts: BtrfsOptions): Promise<BtrfsFs> {
  if (!Number.isInteger(opts.devices) || opts.devices < 1) throw new Error(`createBtrfs: devices must be >= 1, got ${opts.devices}`)
  // realpath: the kernel reports the loop backing file resolved, and we compare against it.
  const st: State = { tmpdir: await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'extfs-btrfs-'))), attached: [] }
  register(st)
  try {
    const sizeMiB = opts.sizeMiB ?? 256
    for (let i = 0; i < opts.devices; i++) {
      const image = path.join(st.tmpdir, `disk${i}.img`)
      await fsp.writeFile(image, '')
      await fsp.truncate(image, sizeMiB * MiB) // sparse: costs nothing until written
      const loopDevice = (await runOk('losetup', ['-f', '--show', image])).stdout.trim()
      st.attached.push({ image, loopDevice })
    }
    const loopDevices = st.attached.map((a) => a.loopDevice)
    await runOk('mkfs.btrfs', ['-q', '-f', '-d', opts.data, '-m', opts.metadata, ...(opts.mkfsArgs ?? []), ...loopDevices])
    // No udev here: tell the kernel about every member, and name them all at mount time too.
    await runOk('btrfs', ['device', 'scan', ...loopDevices])
    st.mountpoint = path.join(st.tmpdir, 'mnt')
    await fsp.mkdir(st.mountpoint)
    const deviceOpts = loopDevices.map((d) => `device=${d}`).join(',')
    const mountOptions = opts.mountOptions ? `${opts.mountOptions},${deviceOpts}` : deviceOpts
    await runOk('mount', ['-t', 'btrfs', '-o', mountOptions, loopDevices[0], st.mountpoint])
    st.mounted = true
    return { loopDevices, images: st.attached.map((a) => a.image), mountpoint: st.mountpoint, tmpdir: st.tmpdir }
  } catch (e) {
    await destroyState(st)
    throw e
  }
}

/** Tear down a BtrfsFs; best effort, returns the problems it met (empty when everything went away). */
export async function destroyBtrfs(ctx: BtrfsFs): Promise<string[]> {
  const st = [...btrfsRegistry].find((s) => s.tmpdir === ctx.tmpdir)
  if (!st) return [] // already destroyed
  return destroyState(st)
}

/** Create, run fn, and always destroy, even if fn throws. */
export async function withBtrfs(opts: BtrfsOptions, fn: (ctx: BtrfsFs) => Promise<void>): Promise<void> {
  await withTestResource(await createBtrfs(opts), destroyBtrfs, 'btrfs', fn)
}

function stateOf(ctx: BtrfsFs): State {
  const st = [...btrfsRegistry].find((s) => s.tmpdir === ctx.tmpdir)
  if (!st) throw new Error(`btrfs ${ctx.tmpdir} is already destroyed`)
  return st
}

/** Unmount the filesystem (it stays registered: destroy still cleans up). */
export async function unmountBtrfs(ctx: BtrfsFs): Promise<void> {
  const st = stateOf(ctx)
  await runOk('umount', [ctx.mountpoint])
  st.mounted = false
}

/**
 * Mount the members that are attached; `degraded` mounts without the detached ones (their devids then
 * count as missing). Every attached member is scanned and named with device=.
 */
export async function mountBtrfs(ctx: BtrfsFs, opts: { degraded?: boolean } = {}): Promise<void> {
  const st = stateOf(ctx)
  const present = st.attached.map((a) => a.loopDevice)
  await runOk('btrfs', ['device', 'scan', ...present])
  const options = [...(opts.degraded ? ['degraded'] : []), ...present.map((d) => `device=${d}`)].join(',')
  await runOk('mount', ['-t', 'btrfs', '-o', options, present[0]!, ctx.mountpoint])
  st.mounted = true
}

/** Take member `i` away (unmounted filesystem only): forgotten by btrfs, its loop device detached. */
export async function detachMember(ctx: BtrfsFs, i: number): Promise<void> {
  const st = stateOf(ctx)
  const a = st.attached.find((x) => x.image === ctx.images[i])
  if (!a) throw new Error(`member ${i} is not attached`)
  await runOk('btrfs', ['device', 'scan', '--forget', a.loopDevice])
  await runOk('losetup', ['-d', a.loopDevice])
  st.attached = st.attached.filter((x) => x !== a)
}

/** Attach member `i`'s image again (on whatever loop device is free); ctx.loopDevices[i] follows. */
export async function attachMember(ctx: BtrfsFs, i: number): Promise<void> {
  const st = stateOf(ctx)
  const loopDevice = (await runOk('losetup', ['-f', '--show', ctx.images[i]!])).stdout.trim()
  st.attached.push({ image: ctx.images[i]!, loopDevice })
  ctx.loopDevices[i] = loopDevice
}

/**
 * `members` devices in the filesystem plus a spare for `btrfs replace`: created as one more member and
 * removed again (btrfs relocates what it held), so it is free and of the members' size.
 */
export async function withBtrfsAndSpare(
  opts: Omit<BtrfsOptions, 'devices'> & { members: number },
  fn: (ctx: BtrfsFs, spare: string) => Promise<void>,
): Promise<void> {
  await withBtrfs({ ...opts, devices: opts.members + 1 }, async (ctx) => {
    const spare = ctx.loopDevices[opts.members]!
    await runOk('btrfs', ['device', 'remove', spare, ctx.mountpoint], { timeoutMs: 120_000 })
    await fn(ctx, spare)
  })
}

/** The index of the manifest's device holding the most extents: the member worth replacing. */
export function busiestDevice(m: { inodes: { extents?: { device: number }[] }[] }): number {
  const counts = new Map<number, number>()
  for (const n of m.inodes) for (const e of n.extents ?? []) counts.set(e.device, (counts.get(e.device) ?? 0) + 1)
  return [...counts].sort((a, b) => b[1] - a[1])[0]![0]
}

async function destroyState(st: State): Promise<string[]> {
  const problems: string[] = []
  if (st.mounted && st.mountpoint) st.mounted = await unmountTestFs(st.mountpoint, problems)
  for (const a of st.attached) {
    // Only touch the device if it is still ours: after a crash the number may have been reused.
    if (loopBackingFile(a.loopDevice) !== a.image) continue
    // The kernel keeps scanned btrfs members in a list after unmount; drop ours so a later user of the
    // same loop number is not mistaken for a member of this filesystem. Fails harmlessly if still mounted.
    if (!st.mounted) await run('btrfs', ['device', 'scan', '--forget', a.loopDevice])
    const r = await run('losetup', ['-d', a.loopDevice])
    if (r.code !== 0) problems.push(`losetup -d ${a.loopDevice}: ${r.stderr.trim()}`)
  }
  st.attached = []
  // Never recurse into a filesystem that is somehow still mounted.
  if (st.mounted) problems.push(`${st.mountpoint} still mounted; left ${st.tmpdir} in place`)
  else await fsp.rm(st.tmpdir, { recursive: true, force: true }).catch((e) => problems.push(`rm ${st.tmpdir}: ${e}`))
  btrfsRegistry.delete(st)
  return problems
}


// --- last-resort cleanup at process exit -------------------------------------------------------
// Exit handlers cannot await, so this path is synchronous. It only touches registered state.

let handlersInstalled = false
function register(st: State): void {
  btrfsRegistry.add(st)
  if (handlersInstalled) return
  handlersInstalled = true
  cleanupAtExit(cleanupBtrfsSync)
}

export function cleanupBtrfsSync(): void {
  for (const st of [...btrfsRegistry]) {
    const sh = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore', timeout: 15_000 })
    if (st.mounted && st.mountpoint) unmountTestFsSync(st.mountpoint)
    for (const a of st.attached) {
      if (loopBackingFile(a.loopDevice) !== a.image) continue
      sh('btrfs', ['device', 'scan', '--forget', a.loopDevice])
      sh('losetup', ['-d', a.loopDevice])
    }
    try {
      if (!st.mountpoint || !isMounted(st.mountpoint)) rmSync(st.tmpdir, { recursive: true, force: true })
    } catch {
      // best effort
    }
    btrfsRegistry.delete(st)
  }
}
