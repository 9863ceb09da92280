// Running the real CLI (bin/extfs, built into dist/) the way scripts do, and views and serves that always go away.
import { ChildProcess, spawn } from 'node:child_process'
import { promises as fsp } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { run, RunResult } from './exec'
import { isMounted } from './loopfs'

export const EXTFS = path.resolve(__dirname, '..', '..', 'bin', 'extfs')

/** `extfs remap`'s stdout when it published a delta: old and new config ID, files, new devices, delta and manifest bytes. */
export const REMAPPED = /^remapped ([0-9a-f]{32}) -> ([0-9a-f]{32}): (\d+) files, (\d+) new devices, delta (\d+) bytes \(manifest (\d+) bytes\)\n$/

export function extfs(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return run(EXTFS, args, { timeoutMs: opts.timeoutMs ?? 120_000, env: opts.env })
}

/**
 * `stderr` without extfs's JSON progress lines (docs/cli.md, "Progress"): a command that runs longer
 * than 5 s on a slow machine writes them before its own lines, which tests count.
 */
export function withoutProgress(stderr: string): string {
  return stderr.split('\n').filter((l) => !l.startsWith('{"message_type":')).join('\n')
}

/** A private scratch directory (on the root filesystem, never on a filesystem a test freezes). */
export async function scratchDir(t: { teardown(fn: () => unknown): void }, prefix = 'extfs-test-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix))
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }))
  return dir
}

/** Unmount a view if it is still there: `extfs umount`, then plain and lazy umount as last resorts. */
export async function ensureUnmounted(mountpoint: string): Promise<void> {
  for (let i = 0; i < 5 && isMounted(mountpoint); i++) {
    await extfs(['umount', mountpoint])
    if (!isMounted(mountpoint)) return
    await new Promise((r) => setTimeout(r, 200))
  }
  if (isMounted(mountpoint)) await run('umount', [mountpoint])
  if (isMounted(mountpoint)) await run('umount', ['-l', mountpoint])
}

/** Mount `manifest` on a fresh directory, run fn, always unmount. */
export async function withView<T>(
  manifest: string,
  fn: (mountpoint: string, logFile: string) => Promise<T>,
  extraArgs: string[] = [],
): Promise<T> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'extfs-view-'))
  const mountpoint = path.join(dir, 'mnt')
  const logFile = path.join(dir, 'view.log')
  await fsp.mkdir(mountpoint)
  try {
    const r = await extfs(['mount', manifest, mountpoint, '--log-file', logFile, ...extraArgs])
    if (r.code !== 0) throw new Error(`extfs mount failed (${r.code}): ${r.stderr}`)
    return await fn(mountpoint, logFile)
  } finally {
    await ensureUnmounted(mountpoint)
    await fsp.rm(dir, { recursive: true, force: true })
  }
}

/** Release the image behind `manifest` (thaw); safe to call twice. */
export async function release(manifest: string): Promise<void> {
  await extfs(['release', manifest])
}

/** `extfs serve` running as a child of the test. */
export interface Served {
  child: ChildProcess
  url: string
  /** http://host:port/metrics of --metrics-listen, when given. */
  metricsUrl?: string
  stderr: () => string
  /** Resolves when it exited, however. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** SIGTERM, then the exit status. */
  stop: () => Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/**
 * Starts `extfs serve` on 127.0.0.1 with a free port; resolves once it logged `serving`. Killed at `t`'s
 * teardown. `opts.nofile`: its descriptor limit (RLIMIT_NOFILE, soft and hard), set by prlimit, which
 * then execs serve in its own place (child.pid is serve's).
 */
export async function startServe(t: { teardown(fn: () => unknown): void }, args: string[], opts: { nofile?: number } = {}): Promise<Served> {
  const serve = [EXTFS, 'serve', '--listen', '127.0.0.1:0', ...args]
  const [cmd, ...argv] = opts.nofile === undefined ? serve : ['prlimit', `--nofile=${opts.nofile}:${opts.nofile}`, '--', ...serve]
  const child = spawn(cmd!, argv, { stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  })
  const serving = await new Promise<{ url: string; metrics?: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${err}`)), 30_000)
    child.stderr!.on('data', (c: Buffer) => {
      err += c.toString()
      const line = err.split('\n').find((l) => l.includes('"msg":"serving"'))
      if (line) {
        clearTimeout(timer)
        resolve(JSON.parse(line))
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`serve exited ${code}: ${err}`))
    })
  })
  return {
    child, url: serving.url, metricsUrl: serving.metrics, stderr: () => err, exited,
    stop: async () => {
      child.kill('SIGTERM')
      return exited
    },
  }
}
