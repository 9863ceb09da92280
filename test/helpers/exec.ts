// Child-process helpers for end-to-end tests. `run` never throws on a non-zero exit so tests can
// assert on failures; `runOk` throws with stderr in the message so setup failures explain themselves.
import { spawn } from 'node:child_process'

export interface RunOptions {
  /** Written to the child's stdin, which is then closed. */
  input?: string | Buffer
  /** Kill the child with SIGKILL after this long (default 120 s). */
  timeoutMs?: number
  cwd?: string
  env?: NodeJS.ProcessEnv
}

export interface RunResult<T extends string | Buffer = string> {
  /** Exit code, or null when killed by a signal (see `signal`, `timedOut`). */
  code: number | null
  signal: NodeJS.Signals | null
  timedOut: boolean
  stdout: T
  stderr: string
}

const DEFAULT_TIMEOUT_MS = 120_000

/** Run a command; resolves with its output whatever the exit status. */
export function run(cmd: string, args: string[], opts: RunOptions & { binary: true }): Promise<RunResult<Buffer>>
export function run(cmd: string, args: string[], opts?: RunOptions & { binary?: false }): Promise<RunResult<string>>
export function run(
  cmd: string,
  args: string[],
  opts: RunOptions & { binary?: boolean } = {},
): Promise<RunResult<string | Buffer>> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['pipe', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    const err: Buffer[] = []
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    // A missing binary is reported as exit code 127, like a shell would, instead of throwing.
    let spawnError: Error | undefined
    child.on('error', (e) => (spawnError = e))
    child.stdin.on('error', () => {}) // the child may exit without reading its input (EPIPE)
    child.stdin.end(opts.input ?? '')
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const stdout = Buffer.concat(out)
      resolve({
        code: spawnError ? 127 : code,
        signal,
        timedOut,
        stdout: opts.binary ? stdout : stdout.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8') + (spawnError ? String(spawnError) : ''),
      })
    })
  })
}

export function describeFailure(cmd: string, args: string[], r: RunResult<string | Buffer>): string {
  const why = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`
  return `${cmd} ${args.join(' ')}: ${why}: ${r.stderr.trim()}`
}

/** Like `run`, but rejects (with stderr in the message) unless the command exits 0. */
export async function runOk(cmd: string, args: string[], opts: RunOptions & { binary: true }): Promise<RunResult<Buffer>>
export async function runOk(cmd: string, args: string[], opts?: RunOptions & { binary?: false }): Promise<RunResult<string>>
export async function runOk(
  cmd: string,
  args: string[],
  opts: RunOptions & { binary?: boolean } = {},
): Promise<RunResult<string | Buffer>> {
  const r = opts.binary ? await run(cmd, args, { ...opts, binary: true }) : await run(cmd, args, { ...opts, binary: false })
  if (r.code !== 0) throw new Error(describeFailure(cmd, args, r))
  return r
}

/**
 * Run `a | b | ...` without a shell (no quoting pitfalls). Rejects unless every stage exits 0, so a
 * failing producer (e.g. `tar -c` on an unreadable file) is not hidden by a happy consumer.
 */
export async function runPipeline(
  stages: Array<[cmd: string, args: string[]]>,
  opts: { timeoutMs?: number; cwd?: string } = {},
): Promise<Array<RunResult<string>>> {
  const children = stages.map(([cmd, args]) => spawn(cmd, args, { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] }))
  for (let i = 0; i + 1 < children.length; i++) children[i].stdout.pipe(children[i + 1].stdin)
  children[0].stdin.end()
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    for (const c of children) c.kill('SIGKILL')
  }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS)
  const results = await Promise.all(
    children.map(
      (child, i) =>
        new Promise<RunResult<string>>((resolve) => {
          const out: Buffer[] = []
          const err: Buffer[] = []
          // Only the last stage's stdout is ours; the others are piped onward.
          if (i === children.length - 1) child.stdout.on('data', (b: Buffer) => out.push(b))
          child.stderr.on('data', (b: Buffer) => err.push(b))
          child.stdin.on('error', () => {})
          let spawnError: Error | undefined
          child.on('error', (e) => (spawnError = e))
          child.on('close', (code, signal) =>
            resolve({
              code: spawnError ? 127 : code,
              signal,
              timedOut,
              stdout: Buffer.concat(out).toString('utf8'),
              stderr: Buffer.concat(err).toString('utf8') + (spawnError ? String(spawnError) : ''),
            }),
          )
        }),
    ),
  )
  clearTimeout(timer)
  results.forEach((r, i) => {
    if (r.code !== 0) throw new Error(describeFailure(stages[i][0], stages[i][1], r))
  })
  return results
}
