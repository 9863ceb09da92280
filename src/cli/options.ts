// The options several commands share, and the parsers of option values: each turns a bad value into
// one line and the usage exit code.
import { Option } from 'commander'
import { ExitCode, ExtfsError } from '../errors'
import { LIMITS } from '../manifest/validate'

function collectDevice(value: string, acc: Map<string, string>): Map<string, string> {
  const eq = value.indexOf('=')
  if (eq <= 0 || eq === value.length - 1) throw new ExtfsError(ExitCode.Usage, `--device takes <id>=<path>, got ${value}`)
  acc.set(value.slice(0, eq), value.slice(eq + 1))
  return acc
}

export const keyOption = () => new Option('--key <file>', 'shared HMAC key file: sign at export, require a valid signature elsewhere')
export const deviceOption = () => new Option('--device <id=path>', 'use this block device for a manifest device (repeatable)').argParser(collectDevice).default(new Map())
export const caOption = () => new Option('--ca <pem>', 'with https://: CA certificate to trust for the initiator (a self-signed one\'s own certificate)')
export const leaseOption = () => new Option('--lease <seconds>', 'with http(s)://: serve opens and reads at most this long after the initiator last answered (default: its --lease)')
  .argParser(parseSeconds('--lease', 0.001))
/**
 * The view's prefetch of small files (native/view/prefetch.c): its window in MiB, 0 turns it off.
 * Absent, the engine picks its default (32 MiB, less on a small host); the most it accepts is
 * XT_PREFETCH_WINDOW_MAX (native/view/engine.h), checked here first for a one-line usage error.
 */
const PREFETCH_WINDOW_MAX_MIB = 256
export const prefetchWindowOption = () => new Option('--prefetch-window <MiB>', `small files read ahead of the reader, at most (0: none; at most ${PREFETCH_WINDOW_MAX_MIB}; default 32, or 1/64 of memory if less)`)
  .argParser((value: string) => {
    const n = Number(value)
    if (!/^[0-9]{1,3}$/.test(value) || n > PREFETCH_WINDOW_MAX_MIB) throw new ExtfsError(ExitCode.Usage, `--prefetch-window takes MiB (a whole number from 0 to ${PREFETCH_WINDOW_MAX_MIB}), got ${value}`)
    return n
  })
/** Progress on stderr (src/cli/progress.ts): none with --quiet; JSON lines with --json or when stderr is not a terminal. */
export const quietOption = () => new Option('-q, --quiet', 'no progress on stderr (errors and warnings still)')
/**
 * --json: the command's result as one JSON object on one line of stdout (docs/json.md), and progress as
 * JSON lines on stderr; on commands without a result on stdout, only the progress lines.
 */
export const jsonOption = (description = 'print the result as one line of JSON (schemas: docs/json.md)') => new Option('--json', description)
export const JSON_PROGRESS = 'progress as JSON lines on stderr (also when stderr is not a terminal)'
export const logLevelOption = () => new Option('--log-level <level>', 'pino log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info')

/** --carry-max: bytes, at most what a mover accepts inline (LIMITS.inlineBytes). */
export function parseCarryMax(value: string): number {
  const n = Number(value)
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n)) throw new ExtfsError(ExitCode.Usage, `--carry-max takes a number of bytes, got ${value}`)
  if (n > LIMITS.inlineBytes) throw new ExtfsError(ExitCode.Usage, `--carry-max ${n} is over ${LIMITS.inlineBytes}, the most a mover accepts per file`)
  return n
}

/** A number of seconds (fractions allowed) for option `name`, at least `min`. */
export function parseSeconds(name: string, min: number): (value: string) => number {
  return (value) => {
    const n = Number(value)
    if (!/^[0-9]+(\.[0-9]+)?$/.test(value) || !Number.isFinite(n) || n < min) throw new ExtfsError(ExitCode.Usage, `${name} takes seconds (at least ${min}), got ${value}`)
    return n
  }
}

/** A whole number of MiB for option `name`, at least 1. */
export function parseMiB(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value)
    if (!/^[0-9]{1,7}$/.test(value) || n < 1) throw new ExtfsError(ExitCode.Usage, `${name} takes MiB (a whole number, at least 1), got ${value}`)
    return n
  }
}

/** A number of connections for option `name`: a whole number from 1 to 1,000,000. */
export function parseConnections(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value)
    if (!/^[0-9]{1,7}$/.test(value) || n < 1 || n > 1_000_000) throw new ExtfsError(ExitCode.Usage, `${name} takes a number of connections from 1 to 1000000, got ${value}`)
    return n
  }
}
