// Background mounts: `extfs mount` starts a detached copy of itself with --foreground and returns once
// that copy reports, over an inherited pipe, that the view serves (or why it could not).
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { ExtfsError, ExitCode } from '../errors'

/** The child finds its end of the pipe through this variable. */
export const READY_FD_ENV = 'EXTFS_READY_FD'
export const DEFAULT_LOG_FILE = '/var/log/extfs/extfs.log'

export interface ReadyMessage {
  ok: boolean
  exitCode?: number
  message?: string
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
 * recorded), and wait for its ready message. Resolves with the child's pid.
 */
export function startBackground(args: string[], logFile: string): Promise<number> {
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
    const pipe = child.stdio[3] as NodeJS.ReadableStream
    pipe.setEncoding('utf8')
    pipe.on('data', (chunk: string) => (text += chunk))
    pipe.on('end', () => {
      let msg: ReadyMessage | undefined
      try {
        msg = JSON.parse(text)
      } catch {
        msg = undefined
      }
      if (msg?.ok) {
        child.unref()
        ;(pipe as unknown as { destroy(): void }).destroy()
        return resolve(child.pid!)
      }
      if (msg) return reject(new ExtfsError(msg.exitCode ?? ExitCode.Internal, msg.message ?? 'mount failed'))
      reject(new ExtfsError(ExitCode.Internal, `the view process exited before serving; see ${logFile}`))
    })
  })
}
