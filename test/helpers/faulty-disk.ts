// A filesystem on a disk that fails reads on one range, with real kernel errors, for end-to-end tests
// of media errors: this machine has no device-mapper (dm-error, dm-flakey), so a loop device is attached
// to a file served by a small libfuse3 fixture (faulty-disk.c, compiled here into the test's temp
// directory) that fails with EIO every read request overlapping an armed byte range. The fixture
// serves its file with direct_io and the loop device is attached with --direct-io=off, so a read of the
// loop device that misses the loop device's own page cache (every O_DIRECT read, as the view's) reaches
// the fixture; the fixture counts them.
//
// Cleanup undoes exactly what was set up, in order, also after a partial setup or a failed test:
// views registered with `viewMountpoint`, the filesystem, the loop device (ours, by name, only while
// still attached to our file), the fixture's mount, the fixture process (by its pid), the directory.
// On exit or a signal the same happens synchronously (cleanupAtExit).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { promises as fsp, rmSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, runOk } from './exec'
import { cleanupAtExit, isMounted, releaseLoopFs, releaseLoopFsSync, sleep, unmountTestFsSync, type LoopState } from './loopfs'
import { ensureUnmounted } from './extfs'

const SOURCE = path.join(__dirname, 'faulty-disk.c')

export interface FaultStatus {
  armed: boolean
  start: number
  length: number
  /** Read requests the fixture failed. */
  eio: number
  /** Read requests that overlapped the range, armed or not. */
  hits: number
  /** All read requests of the disk. */
  reads: number
  /** Read requests that waited on a hold. */
  held: number
}

export interface FaultyFs {
  /** mkdtemp directory (/tmp/wt-media-*) holding everything. */
  tmpdir: string
  /** The fixture's file the loop device is attached to. */
  disk: string
  loopDevice: string
  /** Where the ext4 filesystem on the loop device is mounted (until unmountFs). */
  mountpoint: string
  /** Fail every read request of device bytes overlapping [start, start + length) with EIO. */
  arm(start: number, length: number): Promise<void>
  disarm(): Promise<void>
  /** Reads overlapping the range wait (at most 30 s) until letGo(), instead of failing. */
  hold(start: number, length: number): Promise<void>
  letGo(): Promise<void>
  /** The ctl file: `echo "let go" > ctl` from another process lets held reads go. */
  ctl: string
  status(): Promise<FaultStatus>
  /** Unmount the filesystem (the loop device and the fixture stay). */
  unmountFs(): Promise<void>
  /** A fresh directory under tmpdir for a view; unmounted (extfs umount, then plain and lazy umount) at cleanup. */
  viewMountpoint(name: string): Promise<string>
}

interface State extends LoopState {
  tmpdir: string
  fixtureMnt?: string
  child?: ChildProcess
  views: string[]
}

const live = new Set<State>()
let handlersInstalled = false

/**
 * Create the fixture, the loop device and an ext4 filesystem on it (`sizeMiB`), run fn, always clean
 * up. fn that has not settled after `deadlineMs` (default 8 minutes: before tap's 10-minute timeout,
 * which kills the process with SIGALRM and SIGKILL a second later, too soon to clean up) fails, and the
 * cleanup runs (a read stuck in the view is left pending; busy mounts are detached lazily).
 */
export async function withFaultyFs(opts: { sizeMiB: number; deadlineMs?: number }, fn: (fs: FaultyFs) => Promise<void>): Promise<void> {
  const st: State = { tmpdir: await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'wt-media-'))), views: [] }
  live.add(st)
  if (!handlersInstalled) {
    handlersInstalled = true
    cleanupAtExit(() => [...live].forEach(cleanupSync))
  }
  let failed = false
  let timer: NodeJS.Timeout | undefined
  const deadlineMs = opts.deadlineMs ?? 480_000
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`faulty disk: the test did not end within ${deadlineMs / 1000} s`)), deadlineMs)
  })
  try {
    await Promise.race([(async () => fn(await setUp(st, opts.sizeMiB)))(), deadline])
  } catch (e) {
    failed = true
    throw e
  } finally {
    clearTimeout(timer)
    const problems = await cleanup(st)
    if (problems.length && !failed) throw new Error(`faulty disk cleanup: ${problems.join('; ')}`)
  }
}

async function setUp(st: State, sizeMiB: number): Promise<FaultyFs> {
  const bin = path.join(st.tmpdir, 'faulty-disk')
  const flags = (await runOk('pkg-config', ['--cflags', '--libs', 'fuse3'])).stdout.trim().split(/\s+/)
  await runOk('cc', ['-O1', '-Wall', '-Wextra', '-o', bin, SOURCE, ...flags], { timeoutMs: 60_000 })
  const image = path.join(st.tmpdir, 'disk.img')
  await fsp.writeFile(image, '')
  await fsp.truncate(image, sizeMiB * 1024 * 1024) // sparse

  st.fixtureMnt = path.join(st.tmpdir, 'fixture')
  await fsp.mkdir(st.fixtureMnt)
  const child = spawn(bin, [image, st.fixtureMnt], { stdio: ['ignore', 'ignore', 'pipe'] })
  st.child = child
  let stderr = ''
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()))
  const disk = path.join(st.fixtureMnt, 'disk')
  const ctl = path.join(st.fixtureMnt, 'ctl')
  for (let i = 0; ; i++) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`faulty-disk exited: ${stderr}`)
    if (isMounted(st.fixtureMnt) && (await fsp.stat(disk).then((s) => s.size, () => -1)) === sizeMiB * 1024 * 1024) break
    if (i === 100) throw new Error(`faulty-disk did not mount in 10 s: ${stderr}`)
    await sleep(100)
  }

  st.image = disk // what the loop device's backing file must be for cleanup to detach it
  st.loopDevice = (await runOk('losetup', ['--direct-io=off', '-f', '--show', disk])).stdout.trim()
  // nodiscard: the fixture has no fallocate, so a discard would only fail
  await runOk('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'nodiscard', st.loopDevice], { timeoutMs: 120_000 })
  st.mountpoint = path.join(st.tmpdir, 'mnt')
  await fsp.mkdir(st.mountpoint)
  await runOk('mount', [st.loopDevice, st.mountpoint])
  st.mounted = true

  const control = async (cmd: string) => {
    const h = await fsp.open(ctl, 'r+') // no O_TRUNC: the fixture takes one write at offset 0
    try {
      await h.write(cmd, 0)
    } finally {
      await h.close()
    }
  }
  return {
    tmpdir: st.tmpdir,
    disk,
    loopDevice: st.loopDevice,
    mountpoint: st.mountpoint,
    arm: (start, length) => control(`arm ${start} ${length}`),
    disarm: () => control('disarm'),
    hold: (start, length) => control(`hold ${start} ${length}`),
    letGo: () => control('let go'),
    ctl,
    status: async () => {
      const text = await fsp.readFile(ctl, 'utf8')
      const m = /^armed (\d) start (\d+) length (\d+) eio (\d+) hits (\d+) reads (\d+) held (\d+)\n$/.exec(text)
      if (!m) throw new Error(`faulty-disk ctl: ${JSON.stringify(text)}`)
      const [armed, start, length, eio, hits, reads, held] = m.slice(1).map(Number) as [number, number, number, number, number, number, number]
      return { armed: armed === 1, start, length, eio, hits, reads, held }
    },
    unmountFs: async () => {
      await runOk('umount', [st.mountpoint!])
      st.mounted = isMounted(st.mountpoint!)
    },
    viewMountpoint: async (name) => {
      const mnt = path.join(st.tmpdir, name)
      await fsp.mkdir(mnt)
      st.views.push(mnt)
      return mnt
    },
  }
}

/** Best effort; the problems met (empty when everything went away). */
async function cleanup(st: State): Promise<string[]> {
  const problems: string[] = []
  for (const v of st.views) {
    await ensureUnmounted(v)
    if (isMounted(v)) problems.push(`view ${v} still mounted`)
  }
  // The filesystem may need to read while unmounting: the disk must not fail then.
  if (st.fixtureMnt && isMounted(st.fixtureMnt)) await fsp.writeFile(path.join(st.fixtureMnt, 'ctl'), 'disarm', { flag: 'r+' }).catch(() => undefined)
  await releaseLoopFs(st, problems)
  if (st.fixtureMnt && isMounted(st.fixtureMnt)) {
    // losetup -d lets go of the file once the last opener closed the loop device: retry while busy.
    for (let i = 0; i < 10 && isMounted(st.fixtureMnt); i++) {
      if (i) await sleep(100 * i)
      await run('umount', [st.fixtureMnt], { timeoutMs: 30_000 })
    }
    if (isMounted(st.fixtureMnt)) {
      problems.push(`umount ${st.fixtureMnt} failed, lazily detached`)
      await run('umount', ['-l', st.fixtureMnt], { timeoutMs: 30_000 })
    }
  }
  if (st.child) await stopChild(st.child, problems)
  const mountedBelow = [...st.views, st.mountpoint, st.fixtureMnt].filter((m): m is string => m !== undefined && isMounted(m))
  if (mountedBelow.length) problems.push(`${mountedBelow.join(', ')} still mounted; left ${st.tmpdir} in place`)
  else await fsp.rm(st.tmpdir, { recursive: true, force: true }).catch((e) => problems.push(`rm ${st.tmpdir}: ${e}`))
  live.delete(st)
  return problems
}

/** SIGTERM (the fixture unmounts if it still can), then SIGKILL after 5 s; by pid, only our child. */
async function stopChild(child: ChildProcess, problems: string[]): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 5000).unref())
  if ((await Promise.race([exited, timer])) === 'timeout') {
    problems.push(`faulty-disk (pid ${child.pid}) ignored SIGTERM; killed`)
    child.kill('SIGKILL')
    await exited
  }
}

/** cleanup() for exit handlers, which cannot await. */
function cleanupSync(st: State): void {
  const sh = (cmd: string, args: string[]) => spawnSync(cmd, args, { stdio: 'ignore', timeout: 15_000 })
  for (const v of st.views) if (isMounted(v)) unmountTestFsSync(v)
  if (st.fixtureMnt && isMounted(st.fixtureMnt)) sh('sh', ['-c', 'printf disarm 1<>"$1"', 'sh', path.join(st.fixtureMnt, 'ctl')])
  releaseLoopFsSync(st)
  if (st.fixtureMnt && isMounted(st.fixtureMnt) && sh('umount', [st.fixtureMnt]).status !== 0) sh('umount', ['-l', st.fixtureMnt])
  if (st.child?.pid !== undefined && st.child.exitCode === null && st.child.signalCode === null) st.child.kill('SIGKILL')
  try {
    if (![...st.views, st.mountpoint, st.fixtureMnt].some((m) => m !== undefined && isMounted(m))) rmSync(st.tmpdir, { recursive: true, force: true })
  } catch {
    // best effort
  }
  live.delete(st)
}
