// Background mounts: `extfs mount` starts a detached copy of itself with --foreground and returns once
// that copy reports, over an inherited pipe, that the view serves (or why it could not). Before that,
// the copy sends the progress of its manifest's load over the same pipe, for the parent to show.
//
// The pipe carries lines of JSON: any number of {"progress": {phase, files, bytes, filesTotal?,
// bytesTotal?}}, then one ReadyMessage. Our own child, but parsed defensively all the same: a progress
// line over MAX_LINE bytes, or one that is not what it should be, is dropped.
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { ExtfsError, ExitCode } from '../errors'
import type { Counts, ProgressSink } from '../progress'

/** The child finds its end of the pipe through this variable. */
export const READY_FD_ENV = 'EXTFS_READY_FD'
export const DEFAULT_LOG_FILE = '/var/log/extfs/extfs.log'

export interface ReadyMessage {
  ok: boolean
  exitCode?: number
  message?: string
}

/** A progress message on the pipe. */
interface ProgressMessage {
  phase: string
  files: number
  bytes: number
  filesTotal?: number
  bytesTotal?: number
}

const MAX_LINE = 4096
/** Text without a newline kept at most (a ready message's error line is longer than progress's). */
const MAX_PENDING = 65536
/** The child sends an update at most this often, ms (a phase at once). */
const SEND_EVERY_MS = 100

/**
 * In the child: a sink that sends the load's progress to the parent over the ready pipe, or undefined
 * when there is no parent waiting. Stops sending when the parent is gone.
 */
export function readyPipeProgress(): ProgressSink | undefined {
  const fd = Number(process.env[READY_FD_ENV])
  if (!Number.isInteger(fd)) return undefined
  let phase = ''
  let total: Partial<Counts> | undefined
  let sent = 0
  let broken = false
  const send = (done: Counts) => {
    if (broken || process.env[READY_FD_ENV] === undefined) return
    const msg: ProgressMessage = { phase, files: done.files, bytes: done.bytes, ...(total?.files !== undefined ? { filesTotal: total.files } : {}),
      ...(total?.bytes !== undefined ? { bytesTotal: total.bytes } : {}) }
    try {
      fs.writeSync(fd, JSON.stringify({ progress: msg }) + '\n')
    } catch {
      broken = true // the parent is gone: the load goes on, unseen
    }
    sent = performance.now()
  }
  return {
    setPhase(name, t) {
      phase = name
      total = t
      send({ files: 0, bytes: 0 })
    },
    update(done, t) {
      if (t) total = t
      // The last one (all inodes) always: the parent's final line gives it.
      if (performance.now() - sent >= SEND_EVERY_MS || (total?.files !== undefined && done.files >= total.files)) send(done)
    },
  }
}

/** A progress message from the pipe, checked: undefined when it is not one. */
export function parseProgress(value: unknown): ProgressMessage | undefined {
  const p = (value as { progress?: unknown } | null)?.progress as Record<string, unknown> | undefined
  if (typeof p !== 'object' || p === null) return undefined
  const count = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0
  if (typeof p.phase !== 'string' || !/^[a-z-]{1,16}$/.test(p.phase) || !count(p.files) || !count(p.bytes)) return undefined
  if ((p.filesTotal !== undefined && !count(p.filesTotal)) || (p.bytesTotal !== undefined && !count(p.bytesTotal))) return undefined
  return p as unknown as ProgressMessage
}

/** In the child: tell the parent how the start went (once), then let go of the pipe. */
export function reportReady(err?: Error): void {
  const fd = Number(process.env[READY_FD_ENV])
  if (!Number.isInteger(fd)) return
  const msg: ReadyMessage = err
    ? { ok: false, exitCode: err instanceof ExtfsError ? err.exitCode : ExitCode.Internal, message: err.message }
    : { ok: true }
  try {
    fs.writeSync(fd, JSON.stringify(msg) + '\n')
    fs.closeSync(fd)
  } catch {
    // The parent is gone (killed while waiting); nothing to tell.
  }
  delete process.env[READY_FD_ENV]
}

/**
 * Start `node <cli> <args> --foreground` detached, its stderr to the log file (so even a crash is
 * recorded), and wait for its ready message, passing its progress messages to `progress`. Resolves with
 * the child's pid.
 */
export function startBackground(args: string[], logFile: string, progress?: ProgressSink): Promise<number> {
  fs.mkdirSync(path.dirname(logFile), { recursive: true })
  const logFd = fs.openSync(logFile, 'a')
  const child = spawn(process.execPath, [process.argv[1], ...args, '--foreground', '--log-file', logFile], {
    detached: true,
    stdio: ['ignore', 'ignore', logFd, 'pipe'],
    env: { ...process.env, [READY_FD_ENV]: '3' },
  })
  fs.closeSync(logFd)
  return new Promise((resolve, reject) => {
    child.on('error', (err) => reject(new ExtfsError(ExitCode.Internal, `cannot start the view process: ${err.message}`)))
    let text = ''
    let last = ''
    let phase: string | undefined
    const pipe = child.stdio[3] as NodeJS.ReadableStream
    pipe.setEncoding('utf8')
    pipe.on('data', (chunk: string) => {
      text += chunk
      for (let nl; (nl = text.indexOf('\n')) >= 0; text = text.slice(nl + 1)) {
        last = text.slice(0, nl)
        const p = last.length <= MAX_LINE ? parseProgress(parseJson(last)) : undefined
        if (!p || !progress) continue
        const total = p.filesTotal !== undefined || p.bytesTotal !== undefined ? { files: p.filesTotal, bytes: p.bytesTotal } : undefined
        if (p.phase !== phase) progress.setPhase((phase = p.phase), total)
        progress.update({ files: p.files, bytes: p.bytes }, total)
      }
      if (text.length > MAX_PENDING) text = '' // no line of ours is this long
    })
    pipe.on('end', () => {
      const parsed = parseJson(text || last) as ReadyMessage | undefined
      const msg = typeof parsed === 'object' && parsed !== null && typeof parsed.ok === 'boolean' ? parsed : undefined
      if (msg?.ok === true) {
        child.unref()
        ;(pipe as unknown as { destroy(): void }).destroy()
        return resolve(child.pid!)
      }
      if (msg) return reject(new ExtfsError(msg.exitCode ?? ExitCode.Internal, msg.message ?? 'mount failed'))
      reject(new ExtfsError(ExitCode.Internal, `the view process exited before serving; see ${logFile}`))
    })
  })
}

function parseJson(line: string): unknown {
  try {
    return JSON.parse(line)
  } catch {
    return undefined
  }
}
