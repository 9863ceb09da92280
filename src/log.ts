// Logging: pino JSON lines to stderr or a file. Synchronous writes: the lines are few (start, refused
// opens, failed reads) and must not be lost when a view exits.
import pino, { Logger } from 'pino'
import { printable } from './manifest/names'
import { takeUnfinishedLine } from './stderr-line'

export interface LogOptions {
  level?: string
  file?: string
}

export function createLogger(opts: LogOptions): Logger {
  const dest = opts.file ? pino.destination({ dest: opts.file, sync: true, mkdir: true, append: true }) : onStderr()
  return pino({ level: opts.level ?? 'info', base: { pid: process.pid }, hooks: { logMethod }, formatters: { log: printableFields } }, dest)
}

/** stderr, where a log line first clears progress's unfinished status line (src/stderr-line.ts). */
function onStderr(): pino.DestinationStream {
  const stderr = pino.destination({ fd: 2, sync: true })
  return { write: (line: string) => stderr.write(takeUnfinishedLine() + line) }
}

// pino writes a lone surrogate (a byte of a name that is not UTF-8: src/manifest/names.ts) as U+FFFD;
// as \xNN the line still says which byte it was.
function logMethod(this: Logger, args: Parameters<Logger['info']>, method: (...a: unknown[]) => void): void {
  method.apply(this, args.map((a) => (typeof a === 'string' ? printable(a) : a)))
}

function printableFields(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(fields)) out[k] = typeof v === 'string' ? printable(v) : v
  return out
}
