// `extfs mount` and `extfs backup`: a manifest file on shared storage, or an image `extfs serve`
// answers for (http(s)://initiator:7070/<image>). Parsing and process handling only; the view is
// src/mover/run-view.ts, the remap a backup of a served image asks for at its end src/mover/final-remap.ts.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { ExitCode, ExtfsError } from '../errors'
import { createLogger } from '../log'
import { readKeyFile } from '../manifest/sign'
import { checkMountpoint, requireFuse, requireRoot } from '../mover/checks'
import { runView, type RemoteSource } from '../mover/run-view'
import { DEFAULT_LOG_FILE, READY_FD_ENV, readyPipeProgress, reportReady, startBackground } from '../mover/daemon'
import { progressMode, startProgress, type Progress } from './progress'
import type { ProgressSink } from '../progress'
import { extfsMountAt, unmountView } from '../mover/umount'
import { loadState, takeReport, type ViewReport } from '../mover/state'
import { finalRemap } from '../mover/final-remap'
import { queryView } from '../mover/control'
import { printable } from '../manifest/names'
import type { Shard } from '../view/engine'
import { resolveShard, shardArgs, type ShardArg } from './shard'

export interface MountCliOptions {
  key?: string
  device: Map<string, string>
  foreground?: boolean
  allowOther?: boolean
  logFile?: string
  logLevel: string
  /** https: CA certificate (PEM) to trust for the initiator. */
  ca?: string
  /** The mover's cap on the initiator's lease, seconds. */
  lease?: number
  /** The prefetch window of small files, MiB (0: off); absent: the engine's default. */
  prefetchWindow?: number
  /** Leave a report of tainted files when the view stops (set by `extfs backup` for its own view). */
  report?: boolean
  /** `extfs backup`: mount on this empty directory, kept afterwards, instead of a new private one. */
  mountpoint?: string
  /** Progress on stderr: none; JSON lines (else a status line on a terminal). */
  quiet?: boolean
  json?: boolean
  /** --shard and --shards as given (docs/shards.md); resolved once, by resolved(). */
  shard?: ShardArg
  shards?: number
}

/** The options with the shard resolved (from the environment for `auto`): what the view and a background child get. */
type Resolved = Omit<MountCliOptions, 'shard' | 'shards'> & { shard?: Shard }

function resolved(o: MountCliOptions): Resolved {
  const { shard: _s, shards: _n, ...rest } = o
  return { ...rest, shard: resolveShard(o) }
}

/** An image `extfs serve` answers for, rather than a manifest file. */
export function isImageUrl(source: string): boolean {
  return /^https?:\/\//i.test(source)
}

/** A manifest path made absolute (the background child runs elsewhere); a URL as given. */
function absoluteSource(source: string): string {
  return isImageUrl(source) ? source : path.resolve(source)
}

/** The arguments a background child gets: the parent's, re-stated (the parent's argv may hold `backup`). */
function childArgs(source: string, mountpoint: string, o: Resolved): string[] {
  const args = ['mount', absoluteSource(source), mountpoint, '--log-level', o.logLevel]
  if (o.key) args.push('--key', path.resolve(o.key))
  if (o.ca) args.push('--ca', path.resolve(o.ca))
  if (o.lease !== undefined) args.push('--lease', String(o.lease))
  if (o.prefetchWindow !== undefined) args.push('--prefetch-window', String(o.prefetchWindow))
  if (o.allowOther) args.push('--allow-other')
  for (const [id, p] of o.device) args.push('--device', `${id}=${p}`)
  args.push(...shardArgs(o.shard))
  return args
}

function readKey(o: MountCliOptions): Buffer | undefined {
  return o.key ? readKeyFile(o.key) : undefined
}

function remoteSource(source: string, o: MountCliOptions): RemoteSource | undefined {
  if (!isImageUrl(source)) {
    if (o.ca || o.lease !== undefined) throw new ExtfsError(ExitCode.Usage, '--ca and --lease are for images served by extfs serve (http(s)://host:port/<image>)')
    return undefined
  }
  if (!o.key) throw new ExtfsError(ExitCode.Usage, `${source}: --key is required (the key extfs serve was given)`)
  let ca: Buffer | undefined
  if (o.ca) {
    try {
      ca = fs.readFileSync(o.ca)
    } catch (err) {
      throw new ExtfsError(ExitCode.Usage, `--ca ${o.ca}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
  }
  return { url: source, ca, leaseCapMs: o.lease === undefined ? undefined : Math.round(o.lease * 1000) }
}

/**
 * What the parent of a background view checks itself before starting it, so that these failures get
 * their own exit code and message even when the view process could not even start (no /dev at all).
 * The view process checks everything again.
 */
function backgroundPreflight(source: string, o: MountCliOptions, mountpoint?: string): void {
  requireRoot('mount')
  requireFuse()
  readKey(o)
  remoteSource(source, o)
  if (mountpoint) checkMountpoint(mountpoint)
}

/**
 * The manifest's load as progress: shown by this process (a status line or JSON lines on stderr), or,
 * in the child of a background mount, sent to the parent over the ready pipe (src/mover/daemon.ts).
 */
function loadProgress(o: MountCliOptions): { sink?: ProgressSink; finish(): void } {
  const pipe = readyPipeProgress()
  if (pipe) return { sink: pipe, finish() {} }
  const progress = startProgress({ command: 'mount', mode: progressMode(o) })
  return { sink: progress, finish: () => progress.finish() }
}

export async function mountCommand(source: string, mountpoint: string, given: MountCliOptions): Promise<void> {
  const o = resolved(given)
  if (!o.foreground) {
    backgroundPreflight(source, o, mountpoint)
    const progress = startProgress({ command: 'mount', mode: progressMode(o) })
    await startBackground(childArgs(source, path.resolve(mountpoint), o), o.logFile ?? DEFAULT_LOG_FILE, progress)
    progress.finish()
    return
  }
  const log = createLogger({ level: o.logLevel, file: o.logFile })
  const progress = loadProgress(o)
  let failure: Error | undefined
  await runView({
    manifestPath: absoluteSource(source), remote: remoteSource(source, o), mountpoint, allowOther: !!o.allowOther, key: readKey(o),
    deviceOverrides: o.device, log, report: !!o.report, prefetchWindowBytes: o.prefetchWindow === undefined ? undefined : o.prefetchWindow * 2 ** 20,
    shard: o.shard, progress: progress.sink,
    onReady: (err) => {
      failure = err
      if (!err) progress.finish()
      if (process.env[READY_FD_ENV]) reportReady(err)
    },
  })
  if (failure) throw failure
}

export async function backupCommand(source: string, command: string[], given: MountCliOptions): Promise<number> {
  const o = resolved(given)
  // restic and borg find last night's state by absolute path: a new directory each night makes them
  // read every file again, hence --mountpoint (docs/clients.md).
  const fixed = o.mountpoint === undefined ? undefined : path.resolve(o.mountpoint)
  backgroundPreflight(source, o, fixed)
  const remote = remoteSource(source, o)
  const logFile = o.logFile ?? DEFAULT_LOG_FILE
  const mountpoint = fixed ?? fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-backup-'))
  const progress = startProgress({ command: 'backup', mode: progressMode(o) })
  try {
    await startBackground([...childArgs(source, mountpoint, o), '--report'], logFile, progress)
    const viewPid = loadState(mountpoint)?.pid
    let status = 0
    let unchecked: string | undefined
    try {
      const stopProgress = followCommand(mountpoint, progress)
      try {
        status = await runCommand(command, mountpoint)
      } finally {
        await stopProgress()
      }
      // From serve: relocations up to this moment are reported too, not only those serve's schedule
      // found (src/mover/final-remap.ts). Of no use when the command failed: its status stands.
      if (remote && status === 0) {
        unchecked = viewPid === undefined ? 'the view did not record its process'
          : await interruptible((signal) => finalRemap({ remote, key: readKey(o)!, mountpoint, viewPid, signal }))
      }
      if (unchecked === undefined) await checkRecordOnce(mountpoint)
    } finally {
      // A view that went away by itself (a scheduler's SIGTERM reaches it too) left its report: read it.
      if (extfsMountAt(mountpoint)) await unmountView(mountpoint)
    }
    const report = viewPid === undefined ? undefined : takeReport(mountpoint, viewPid)
    return verdict(status, report, unchecked, logFile)
  } finally {
    if (!fixed) fs.rmdirSync(mountpoint)
  }
}

/** How often backup asks its view what the command has read. */
const BACKUP_PROGRESS_MS = 1000

/**
 * The progress of backup's command, as its view counts it (src/mover/control.ts): distinct files
 * opened and bytes the view delivered to the kernel (answers to reads, and stores ahead of the
 * reader), of the image's regular files and their bytes. Delivered bytes may exceed what the command
 * read (a store ahead and the reader's own read of the same range both count): shown at most the
 * total. Returns what ends it: a last look, then the final line.
 */
function followCommand(mountpoint: string, progress: Progress): () => Promise<void> {
  let started = false
  let asking: Promise<void> | undefined // one question at a time: answers arrive in order
  const ask = async () => {
    const v = await queryView(mountpoint).catch(() => undefined)
    if (!v?.served || !v.image) return // the fuse-native engine counts nothing
    const total = { files: v.image.files, bytes: v.image.bytes }
    const s = v.served
    if (!started) progress.setPhase('read', total)
    started = true
    progress.update({ files: s.filesOpened, bytes: Math.min(total.bytes, s.readBytes + s.pushedBytes + s.prefetchedBytes) }, total)
  }
  const look = () => (asking ??= ask().finally(() => (asking = undefined)))
  const timer = setInterval(() => void look(), BACKUP_PROGRESS_MS)
  void look()
  return async () => {
    clearInterval(timer)
    await asking
    await look()
    progress.finish(started ? undefined : { files: 0, bytes: 0 }) // no read phase: the load's counts are not the command's
  }
}

/** Runs the backup's command in the view; its exit status (128+signal when killed, 127 when it cannot start). */
function runCommand(command: string[], cwd: string): Promise<number> {
  return new Promise<number>((resolve) => {
    const child = spawn(command[0], command.slice(1), { cwd, stdio: 'inherit' })
    // Kept after the command exited: a signal must not kill us then, with the view still mounted.
    const forward = (sig: NodeJS.Signals) => child.kill(sig)
    process.on('SIGINT', forward).on('SIGTERM', forward)
    child.on('error', (err) => {
      say(`cannot run ${command[0]}: ${err.message}`)
      resolve(127)
    })
    child.on('exit', (code, signal) => resolve(code ?? 128 + (signal ? os.constants.signals[signal] : 0)))
  })
}

/** Runs `fn` with a signal that SIGINT or SIGTERM aborts (then the view is unmounted as always). */
async function interruptible<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const stop = new AbortController()
  const abort = (sig: NodeJS.Signals) => stop.abort(new Error(`interrupted by ${sig}`))
  process.on('SIGINT', abort).on('SIGTERM', abort)
  try {
    return await fn(stop.signal)
  } finally {
    process.off('SIGINT', abort).off('SIGTERM', abort)
  }
}

/**
 * The exit status of `extfs backup`: the command's, unless the backup cannot be trusted; then 7 and one
 * line saying why (the most specific reason only), or 11 when all it lacks is metadata the kernel
 * could not pass. Files whose reads failed and files whose metadata could not be passed are named
 * in lines of their own, whatever the status.
 */
function verdict(status: number, report: ViewReport | undefined, unchecked: string | undefined, logFile: string): number {
  // Said whatever the status: a command that only warns (tar --acls) exits 0 without them.
  const unserved = sayUnservedMetadata(report, logFile)
  // Said whatever the status too: a command that ignores read errors (tar --ignore-failed-read, which
  // may only see a short read and pad the file with zeros) exits 0 without those bytes.
  const failed = sayFailedReads(report, logFile)
  // Bytes of these files may have come from blocks the initiator had moved away: the backup of them is not trustworthy.
  const tainted = report?.tainted ?? []
  if (tainted.length > 0) {
    say(`${tainted.length} file(s) were read under a superseded map and not read again: ${tainted.join(', ')}`)
    return status === 0 ? ExitCode.Stale : status
  }
  if (status !== 0) return status
  // A command that shrugs off a refused read (a shell loop, `cp` of some files) must not look clean.
  // Conservative: a refusal of the last check's own open (the image released in the instant after
  // the command) counts too. Failed reads were named above; this line is for the other refusals.
  const refused = report?.refused ?? 0
  if (refused > (report?.failedReads?.requests ?? 0)) {
    const why = report?.firstRefusal ? `, first: ${report.firstRefusal}` : ''
    say(`the view refused or failed ${refused} request(s) while the command ran${why}; the backup is incomplete (log: ${logFile})`)
    return ExitCode.Stale
  }
  if (failed) return ExitCode.Stale
  if (unchecked !== undefined) {
    say(`the backup cannot be checked against relocations up to its end: ${unchecked}`)
    return ExitCode.Stale
  }
  return unserved ? ExitCode.UnservedMetadata : status
}

/** One line of `extfs backup` on stderr; paths in it may hold bytes that are not UTF-8 (shown \xNN). */
function say(line: string): void {
  process.stderr.write(`extfs: ${printable(line)}\n`)
}

/** How many files the backup's line names; the view's log names each. */
const NAMED_FILES = 5

/** One line naming the files whose metadata the command asked for and could not have; whether there were any. */
function sayUnservedMetadata(report: ViewReport | undefined, logFile: string): boolean {
  const { count, files } = report?.unservedMetadata ?? { count: 0, files: [] }
  if (count === 0) return false
  const named = files.slice(0, NAMED_FILES).join(', ') + (count > NAMED_FILES ? ` and ${count - NAMED_FILES} more` : '')
  say(`the command could not read the POSIX ACLs of ${count} file(s), larger than the kernel passes through FUSE: ${named}; the backup lacks them (log: ${logFile})`)
  return true
}

/**
 * One line naming the files whose reads failed while the command ran (the device answered an error:
 * the view replied EIO and logged each request); whether there were any.
 */
function sayFailedReads(report: ViewReport | undefined, logFile: string): boolean {
  const { requests, files, paths } = report?.failedReads ?? { requests: 0, files: 0, paths: [] }
  if (files === 0) return false
  const named = paths.slice(0, NAMED_FILES).join(', ') + (files > NAMED_FILES ? ` and ${files - NAMED_FILES} more` : '')
  say(`reads of ${files} file(s) failed (device errors, ${requests} request(s)) while the command ran: ${named}; the backup is incomplete (log: ${logFile})`)
  return true
}

/**
 * One last config-ID check before the view goes: opening any regular file makes the view judge the
 * record, so a remap published while the command ran still taints what was read before it.
 */
async function checkRecordOnce(mountpoint: string): Promise<void> {
  // Paths as bytes: a name that is not UTF-8 would not open as a string.
  const dirs = [Buffer.from(mountpoint)]
  for (let seen = 0; dirs.length > 0 && seen < 10_000; seen++) {
    const dir = dirs.shift()!
    const entries = await fs.promises.readdir(dir, { withFileTypes: true, encoding: 'buffer' }).catch(() => [])
    const child = (name: Buffer) => Buffer.concat([dir, Buffer.from('/'), name])
    const file = entries.find((e) => e.isFile())
    if (file) {
      await fs.promises.open(child(file.name), 'r').then((h) => h.close(), () => undefined)
      return
    }
    dirs.push(...entries.filter((e) => e.isDirectory()).map((e) => child(e.name)))
  }
}
