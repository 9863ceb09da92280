// The owner's hooks around taking a frozen image: `--pre-freeze` quiesces the application (e.g. a
// database checkpoint) so the image is consistent across files; `--post-thaw` resumes it.
import { spawnSync } from 'node:child_process'
import { ExportError } from '../errors'

export type HookName = 'pre-freeze' | 'post-thaw'

/** What a hook learns from its environment (documented in docs/frozen-images.md). */
export interface HookContext {
  imageId: string
  kind: string
  /** freeze, none, btrfs-snapshot or clone-set. */
  mechanism: string
  mountpoint: string
  paths: string[]
  manifest: string
}

function environment(name: HookName, ctx: HookContext, status?: 'taken' | 'failed'): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    EXTFS_HOOK: name,
    EXTFS_IMAGE_ID: ctx.imageId,
    EXTFS_FROZEN_IMAGE: ctx.kind,
    EXTFS_MECHANISM: ctx.mechanism,
    EXTFS_MOUNTPOINT: ctx.mountpoint,
    // Newline-separated: paths may hold spaces and colons but a newline in an exported path is refused elsewhere in practice.
    EXTFS_PATHS: ctx.paths.join('\n'),
    EXTFS_MANIFEST: ctx.manifest,
  }
  if (status) env.EXTFS_IMAGE_STATUS = status
  return env
}

/**
 * Run `command` with /bin/sh -c, cwd `/` (a hook must not hold the exported filesystem busy). Its
 * stdout goes to our stderr: export's stdout is the one line scripts parse. Returns a one-line
 * description of the failure, or undefined when it exited 0.
 */
function runHook(name: HookName, command: string, env: NodeJS.ProcessEnv): string | undefined {
  const r = spawnSync('/bin/sh', ['-c', command], { cwd: '/', env, stdio: ['ignore', 2, 2] })
  if (r.error) return `${name} hook could not be started: ${r.error.message}`
  if (r.signal) return `${name} hook was killed by ${r.signal}: ${command}`
  if (r.status !== 0) return `${name} hook exited with status ${r.status}: ${command}`
  return undefined
}

/** A failing pre-freeze hook aborts the export before anything is created. */
export function runPreFreeze(command: string | undefined, ctx: HookContext): void {
  if (command === undefined) return
  const failure = runHook('pre-freeze', command, environment('pre-freeze', ctx))
  if (failure) throw new ExportError(`${failure}; nothing was exported`)
}

/** Runs after the image was taken, or after taking it failed; its failure is only reported. */
export function runPostThaw(command: string | undefined, ctx: HookContext, status: 'taken' | 'failed', warn: (msg: string) => void): void {
  if (command === undefined) return
  const failure = runHook('post-thaw', command, environment('post-thaw', ctx, status))
  if (failure) warn(failure)
}
