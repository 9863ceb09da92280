// Throw-away filesystems on loop devices for end-to-end tests. Other agents share the machine's loop
// devices, so we only ever detach the device we attached (by name) and never `losetup -D`.
import { spawnSync } from 'node:child_process'
import { promises as fsp, readFileSync, rmSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, runOk } from './exec'

export interface LoopFsOptions {
  fs: 'ext4' | 'xfs'
  /** Put the filesystem in a single partition starting at sector 2048 (1 MiB) instead of the whole device. */
  partition?: 'gpt' | 'mbr'
  /** Image size; default 128 MiB for ext4, 320 MiB for XFS (mkfs.xfs refuses less than 300 MB). */
  sizeMiB?: number
  mkfsArgs?: string[]
  /** Extra `mount -o` options. */
  mountOptions?: string
}

export interface LoopFs {
  /** Sparse image file backing the loop device. */
  image: string
  /** The loop device we attached, e.g. /dev/loop3. */
  loopDevice: string
  /** The device the filesystem lives on: loopDevice, or /dev/loopNp1 when partitioned. */
  fsDevice: string
  /** Byte offset of fsDevice on loopDevice (0 without a partition). */
  partitionStartBytes: number
  mountpoint: string
  /** mkdtemp directory holding the image and the mountpoint. */
  tmpdir: string
}

/** What has been set up so far; cleanup undoes exactly these steps, also after a partial create. */
interface State extends LoopState {
  tmpdir: string
}

/** Everything not yet destroyed; the exit/signal handlers clean these up as a last resort. */
export const registry = new Set<State>()

const PARTITION_START_SECTOR = 2048

export async function createLoopFs(opts: LoopFsOptions): Promise<LoopFs> {
  // realpath: the kernel reports the loop backing file resolved, and we compare against it.
  const st: State = { tmpdir: await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), `extfs-loop-${opts.fs}-`))) }
  register(st)
  try {
    st.image = path.join(st.tmpdir, 'disk.img')
    const sizeMiB = opts.sizeMiB ?? (opts.fs === 'xfs' ? 320 : 128)
    await fsp.writeFile(st.image, '')
    await fsp.truncate(st.image, sizeMiB * 1024 * 1024) // sparse: costs nothing until written

    st.loopDevice = (await runOk('losetup', ['-f', '--show', st.image])).stdout.trim()
    let fsDevice = st.loopDevice
    let partitionStartBytes = 0
    if (opts.partition) {
      const label = opts.partition === 'gpt' ? 'gpt' : 'dos'
      const type = opts.partition === 'gpt' ? 'linux' : '83'
      // sfdisk complains it cannot re-read the table (no partition scan on these loop devices); that
      // is expected, partx below tells the kernel instead: -u, which adds what the kernel lacks and is
      // content when it has it already (-a failed a CI run with "error adding partition 1").
      await runOk('sfdisk', ['-q', st.loopDevice], { input: `label: ${label}\nstart=${PARTITION_START_SECTOR}, type=${type}\n` })
      st.partitioned = true
      await runOk('partx', ['-u', st.loopDevice])
      fsDevice = `${st.loopDevice}p1`
      // Trust the kernel's view of the start, not our intent: the mapping code must add exactly this.
      const sysStart = path.join('/sys/class/block', path.basename(fsDevice), 'start')
      partitionStartBytes = Number(readFileSync(sysStart, 'utf8').trim()) * 512
      await waitForPath(fsDevice)
    }

    await runOk(opts.fs === 'xfs' ? 'mkfs.xfs' : 'mkfs.ext4', [
      ...(opts.fs === 'xfs' ? ['-q', '-f'] : ['-q', '-F']),
      // mke2fs picks 1 KiB blocks for small filesystems; 4 KiB is what real disks (and the
      // block-boundary file sizes in populate.ts) assume.
      ...(opts.fs === 'ext4' && !opts.mkfsArgs?.includes('-b') ? ['-b', '4096'] : []),
      ...(opts.mkfsArgs ?? []),
      fsDevice,
    ])
    st.mountpoint = path.join(st.tmpdir, 'mnt')
    await fsp.mkdir(st.mountpoint)
    await runOk('mount', [...(opts.mountOptions ? ['-o', opts.mountOptions] : []), fsDevice, st.mountpoint])
    st.mounted = true
    return { image: st.image, loopDevice: st.loopDevice, fsDevice, partitionStartBytes, mountpoint: st.mountpoint, tmpdir: st.tmpdir }
  } catch (e) {
    await destroyState(st)
    throw e
  }
}

/** Tear down a LoopFs; best effort, returns the problems it met (empty when everything went away). */
export async function destroyLoopFs(ctx: LoopFs): Promise<string[]> {
  const st = [...registry].find((s) => s.tmpdir === ctx.tmpdir)
  if (!st) return [] // already destroyed
  return destroyState(st)
}

/** Create, run fn, and always destroy, even if fn throws or leaves the filesystem frozen. */
export async function withLoopFs(opts: LoopFsOptions, fn: (ctx: LoopFs) => Promise<void>): Promise<void> {
  await withTestResource(await createLoopFs(opts), destroyLoopFs, 'loop fs', fn)
}

/** Flush and remount read-only (a stand-in for a frozen image that needs no thaw). */
export async function remountReadOnly(ctx: LoopFs): Promise<void> {
  await runOk('sync', ['-f', ctx.mountpoint])
  await runOk('mount', ['-o', 'remount,ro', ctx.mountpoint])
}

export async function remountReadWrite(ctx: LoopFs): Promise<void> {
  await runOk('mount', ['-o', 'remount,rw', ctx.mountpoint])
}

async function destroyState(st: State): Promise<string[]> {
  const problems: string[] = []
  await releaseLoopFs(st, problems)
  // Never recurse into a filesystem that is somehow still mounted.
  if (st.mounted) problems.push(`${st.mountpoint} still mounted; left ${st.tmpdir} in place`)
  else await fsp.rm(st.tmpdir, { recursive: true, force: true }).catch((e) => problems.push(`rm ${st.tmpdir}: ${e}`))
  registry.delete(st)
  return problems
}

/** What a test filesystem on one loop device holds: released by the two functions below. */
export interface LoopState {
  image?: string
  loopDevice?: string
  partitioned?: boolean
  mountpoint?: string
  mounted?: boolean
}

/**
 * Unmount the filesystem, then forget the partitions and detach the loop device, only if it is still
 * ours (after a crash the number may have been reused) and nothing is mounted from it any more.
 */
export async function releaseLoopFs(st: LoopState, problems: string[]): Promise<void> {
  if (st.mounted && st.mountpoint) st.mounted = await unmountTestFs(st.mountpoint, problems)
  if (!st.mounted && st.loopDevice && loopBackingFile(st.loopDevice) === st.image) {
    for (const [cmd, args] of [...(st.partitioned ? [['partx', ['-d', st.loopDevice]]] : []), ['losetup', ['-d', st.loopDevice]]] as [string, string[]][]) {
      const r = await run(cmd, args)
      if (r.code !== 0) problems.push(`${cmd} ${args.join(' ')}: ${r.stderr.trim()}`)
    }
  }
  if (!st.mounted) st.loopDevice = undefined
}

/** releaseLoopFs for exit handlers: synchronous, best effort. */
export function releaseLoopFsSync(st: LoopState): void {
  if (st.mounted && st.mountpoint) unmountTestFsSync(st.mountpoint)
  if (st.loopDevice && loopBackingFile(st.loopDevice) === st.image) {
    const sh = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore', timeout: 15_000 })
    if (st.partitioned) sh('partx', ['-d', st.loopDevice])
    sh('losetup', ['-d', st.loopDevice])
  }
}

/**
 * Run fn on a test resource and always destroy it, even if fn throws; a cleanup problem fails the
 * test only when fn succeeded (a test failure is the more useful report).
 */
export async function withTestResource<C>(ctx: C, destroy: (c: C) => Promise<string[]>, what: string, fn: (ctx: C) => Promise<void>): Promise<void> {
  let failed = false
  try {
    await fn(ctx)
  } catch (e) {
    failed = true
    throw e
  } finally {
    const problems = await destroy(ctx)
    if (problems.length && !failed) throw new Error(`${what} cleanup: ${problems.join('; ')}`)
  }
}

/**
 * Thaw and unmount a test filesystem, retrying while it is busy, lazily as the last resort; problems go
 * to `problems`. Returns whether it is still mounted.
 */
export async function unmountTestFs(mountpoint: string, problems: string[]): Promise<boolean> {
  // A frozen filesystem cannot be unmounted and blocks every writer; thaw first, ignore "not frozen".
  await run('fsfreeze', ['-u', mountpoint], { timeoutMs: 10_000 })
  let unmounted = false
  for (let i = 0; i < 5 && !unmounted; i++) {
    if (i) await sleep(200 * i)
    unmounted = (await run('umount', [mountpoint], { timeoutMs: 30_000 })).code === 0 || !isMounted(mountpoint)
  }
  if (!unmounted) {
    const r = await run('umount', ['-l', mountpoint], { timeoutMs: 30_000 })
    problems.push(`umount ${mountpoint} failed, ${r.code === 0 ? 'lazily detached' : r.stderr.trim()}`)
  }
  return isMounted(mountpoint)
}

/** unmountTestFs for exit handlers, which cannot await. */
export function unmountTestFsSync(mountpoint: string): void {
  const sh = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore', timeout: 15_000 })
  sh('fsfreeze', ['-u', mountpoint])
  if (sh('umount', [mountpoint]).status !== 0) sh('umount', ['-l', mountpoint])
}

/** The file a loop device is attached to, or undefined if it is free. */
export function loopBackingFile(loopDevice: string): string | undefined {
  try {
    const f = readFileSync(path.join('/sys/block', path.basename(loopDevice), 'loop/backing_file'), 'utf8').trim()
    return f.replace(/ \(deleted\)$/, '')
  } catch {
    return undefined
  }
}

export function isMounted(mountpoint: string): boolean {
  // mountinfo escapes spaces etc. as octal; our mountpoints come from mkdtemp and have none.
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[4] === mountpoint)
}

export async function waitForPath(p: string): Promise<void> {
  // devtmpfs creates partition nodes asynchronously with respect to partx; wait a little.
  for (let i = 0; i < 50; i++) {
    if (await fsp.stat(p).then(() => true, () => false)) return
    await sleep(20)
  }
  throw new Error(`${p} did not appear`)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

// --- last-resort cleanup at process exit -------------------------------------------------------
// Exit handlers cannot await, so this path is synchronous. It only touches registered state.

/** Signals that end a test process: tap ends a test file that ran out of time with SIGALRM, not with 'exit'. */
const FATAL_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const

/**
 * Run `cleanup` at exit and on SIGINT/SIGTERM/SIGHUP/SIGALRM (then re-raised with the default action).
 * `first`: before the handlers installed so far (what sits on top of another helper's devices).
 */
export function cleanupAtExit(cleanup: () => void, opts: { first?: boolean } = {}): void {
  if (opts.first) {
    process.prependListener('exit', cleanup)
    for (const sig of FATAL_SIGNALS) process.prependOnceListener(sig, cleanup)
    return
  }
  process.on('exit', cleanup)
  for (const sig of FATAL_SIGNALS) {
    process.once(sig, () => {
      cleanup()
      process.kill(process.pid, sig) // re-raise with the default action now that our handler is gone
    })
  }
}

let handlersInstalled = false
function register(st: State): void {
  registry.add(st)
  if (handlersInstalled) return
  handlersInstalled = true
  cleanupAtExit(cleanupRegisteredSync)
}

export function cleanupRegisteredSync(): void {
  for (const st of [...registry]) {
    releaseLoopFsSync(st)
    try {
      if (!st.mountpoint || !isMounted(st.mountpoint)) rmSync(st.tmpdir, { recursive: true, force: true })
    } catch {
      // best effort
    }
    registry.delete(st)
  }
}
