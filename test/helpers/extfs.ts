// Running the real CLI (bin/extfs, built into dist/) the way scripts do, and views that always go away.
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
