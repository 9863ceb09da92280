// Logging: pino JSON lines to stderr or a file. Synchronous writes: the lines are few (start, refused
// opens, failed reads) and must not be lost when a view exits.
import pino, { Logger } from 'pino'

export interface LogOptions {
  level?: string
  file?: string
}

export function createLogger(opts: LogOptions): Logger {
  const dest = opts.file ? pino.destination({ dest: opts.file, sync: true, mkdir: true, append: true }) : pino.destination({ fd: 2, sync: true })
  return pino({ level: opts.level ?? 'info', base: { pid: process.pid } }, dest)
}
