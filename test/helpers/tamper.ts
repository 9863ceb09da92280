// Tools for feeding the CLI bad input and checking that a refusal left nothing behind: tampered copies
// of a real manifest (with its config-ID record beside them), raw loop devices that are not the exported
// one, the one-line error contract of docs/cli.md, and views of the mount table and /run/extfs.
import { promises as fsp, readFileSync, readdirSync } from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import type { Test } from 'tap'
import { run, runOk, RunOptions, RunResult } from './exec'
import { EXTFS } from './extfs'
import { destroyLoopFs, LoopFs, loopBackingFile, registry } from './loopfs'

// Tampering reaches where the types forbid (that is the point), so manifests are handled untyped.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Loose = any

export async function readJson(file: string): Promise<Loose> {
  return JSON.parse(await fsp.readFile(file, 'utf8'))
}

/** Where a manifest's config-ID record lives (relative names are beside the manifest). */
export function recordOf(manifestPath: string, m: Loose): string {
  return path.resolve(path.dirname(manifestPath), m.configRecord)
}

/**
 * Write `text` as `<destDir>/<basename of src>` and copy src's config-ID record beside it under the
 * name the manifest records, so the copy resolves a current record exactly as the original does.
 * Returns the new manifest's path.
 */
export async function writeBeside(src: string, destDir: string, text: string | Buffer): Promise<string> {
  const original = await readJson(src)
  const dest = path.join(destDir, path.basename(src))
  await fsp.writeFile(dest, text)
  if (!path.isAbsolute(original.configRecord)) {
    await fsp.copyFile(recordOf(src, original), path.join(destDir, original.configRecord))
  }
  return dest
}

/** A copy of the manifest in src after `edit` changed it (in place), written beside a copy of its record. */
export async function tamperedCopy(src: string, destDir: string, edit: (m: Loose) => void): Promise<string> {
  const m = await readJson(src)
  edit(m)
  return writeBeside(src, destDir, JSON.stringify(m, null, 1))
}

/**
 * Every path under dir with its size, mtime and inode number (sorted), to prove that a refused command
 * created, rewrote or replaced nothing. Never reads file contents (atime stays put).
 */
export async function snapshotDir(dir: string): Promise<string[]> {
  const out: string[] = []
  const walk = async (rel: string): Promise<void> => {
    for (const d of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${d.name}` : d.name
      const st = await fsp.lstat(path.join(dir, child))
      out.push(`${child} size=${st.size} mtime=${st.mtimeMs} ino=${st.ino}`)
      if (d.isDirectory()) await walk(child)
    }
  }
  await walk('')
  return out.sort()
}

export interface MountLine {
  mountpoint: string
  fsType: string
  source: string
}

export function mountTable(): MountLine[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(' - '))
    .map((line) => {
      const [left, right] = line.split(' - ')
      const [fsType, source] = right.split(' ')
      return { mountpoint: unescape(left.split(' ')[4]), fsType, source: unescape(source) }
    })
}

export function mountsAt(mountpoint: string): MountLine[] {
  return mountTable().filter((m) => m.mountpoint === mountpoint)
}

/** extfs views (fsname `extfs:<config id>`), optionally only those of one config ID. */
export function extfsMounts(configId?: string): MountLine[] {
  return mountTable().filter((m) => (configId ? m.source === `extfs:${configId}` : m.source.startsWith('extfs:')))
}

/** The /run/extfs state of the view serving `mountpoint`, if any (other agents' views are ignored). */
export function viewState(mountpoint: string): { pid: number; mountpoint: string; manifest: string } | undefined {
  let names: string[]
  try {
    names = readdirSync('/run/extfs')
  } catch {
    return undefined
  }
  for (const n of names) {
    if (!n.endsWith('.json')) continue
    try {
      const s = JSON.parse(readFileSync(path.join('/run/extfs', n), 'utf8'))
      if (s.mountpoint === mountpoint) return s
    } catch {
      // being rewritten, or not ours
    }
  }
  return undefined
}

/** Processes whose command line mentions `needle` (a unique scratch path): lingering view processes. */
export function processesMentioning(needle: string): number[] {
  const pids: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) pids.push(Number(name))
    } catch {
      // gone meanwhile
    }
  }
  return pids
}

/**
 * The error contract of docs/cli.md: exit `code`, exactly one stderr line `extfs: <problem>` matching
 * `message`, no stack trace.
 */
export function assertRefused(t: Test, r: RunResult, code: number, message: RegExp, what = 'command'): void {
  t.equal(r.code, code, `${what} exits ${code}${r.code !== code ? ` (stderr: ${r.stderr.trim()})` : ''}`)
  t.match(r.stderr, /^extfs: [^\n]*\n$/, `${what}: stderr is exactly one "extfs: " line`)
  t.match(r.stderr, message, `${what}: stderr names the problem`)
  t.notMatch(r.stderr, /^\s+at .+[:(]\d+/m, `${what}: no stack trace`)
}

export interface RawLoop {
  image: string
  loopDevice: string
  tmpdir: string
}

/**
 * A loop device over a sparse file of `sizeBytes` with no filesystem, optionally with `content`
 * written at offset 0. Registered with the loopfs helpers, so the process-exit cleanup detaches it
 * (by name, only if still ours) like any loop filesystem.
 */
export async function createRawLoop(sizeBytes: number, content?: Buffer): Promise<RawLoop> {
  const tmpdir = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'extfs-rawloop-')))
  const image = path.join(tmpdir, 'raw.img')
  await fsp.writeFile(image, content ?? '')
  await fsp.truncate(image, sizeBytes)
  const st: { tmpdir: string; image: string; loopDevice?: string } = { tmpdir, image }
  registry.add(st)
  st.loopDevice = (await runOk('losetup', ['-f', '--show', image])).stdout.trim()
  if (loopBackingFile(st.loopDevice) !== image) throw new Error(`losetup attached ${st.loopDevice} to something else`)
  return { image, loopDevice: st.loopDevice, tmpdir }
}

export async function destroyRawLoop(raw: RawLoop): Promise<void> {
  const problems = await destroyLoopFs({ tmpdir: raw.tmpdir } as LoopFs)
  if (problems.length) throw new Error(`raw loop cleanup: ${problems.join('; ')}`)
}

/**
 * Prefix for running extfs the way a user's shell would. The test runner (tap's processinfo plugin)
 * injects an instrumentation --import through NODE_OPTIONS into every child it can see, and that hook
 * writes under the checkout when the process exits (failing, with a stack trace, for non-root users).
 */
export const WITHOUT_TEST_HOOKS = ['env', '-u', 'NODE_OPTIONS']

/** `extfs <argv>` without the test runner's hooks; resolves with its output whatever the exit status. */
export function cli(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = WITHOUT_TEST_HOOKS
  return run(cmd, [...args, EXTFS, ...argv], opts)
}

/** Replace a file by rename (how the initiator rewrites a record): a reader sees old or new, never half. */
export async function replaceAtomically(file: string, text: string): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`)
  await fsp.writeFile(tmp, text)
  await fsp.rename(tmp, file)
}
