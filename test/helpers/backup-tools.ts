// The backup tools a mover runs against the view, invoked the way an administrator would.
import { spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { promises as fsp } from 'node:fs'
import { RunResult, runOk, runPipeline } from './exec'

/** What GNU tar needs to keep every kind of metadata the view serves (the pax format follows from --xattrs). */
export const TAR_META = ['--xattrs', '--xattrs-include=*', '--acls', '--numeric-owner']

/**
 * `tar -c | tar -x` from src into destDir (created if missing). Rejects if either side fails.
 * GNU tar skips sockets with a warning ("socket ignored") and exit status 0: callers comparing
 * trees must ignore sockets. Returns both sides' results (stderr carries such warnings).
 */
export async function tarRoundTrip(src: string, destDir: string, opts: { extraCreateArgs?: string[] } = {}): Promise<RunResult[]> {
  await fsp.mkdir(destDir, { recursive: true })
  return runPipeline(
    [
      ['tar', [...TAR_META, ...(opts.extraCreateArgs ?? []), '-C', src, '-cpf', '-', '.']],
      ['tar', [...TAR_META, '-C', destDir, '-xpf', '-']],
    ],
    { timeoutMs: 600_000 },
  )
}

/** `rsync -aHAX --numeric-ids src/ dest/`: hard links, ACLs, xattrs, devices and specials. */
export async function rsyncCopy(src: string, dest: string, extraArgs: string[] = []): Promise<RunResult> {
  return runOk('rsync', ['-aHAX', '--numeric-ids', ...extraArgs, `${src.replace(/\/+$/, '')}/`, `${dest.replace(/\/+$/, '')}/`], {
    timeoutMs: 600_000,
  })
}

export interface DdOptions {
  /** Block size in bytes (default 1 MiB). */
  bs?: number
  /** Units of bs, as dd counts them. */
  skip?: number
  count?: number
  /** e.g. ['direct'] to read a raw device past the page cache. */
  iflag?: string[]
}

/** sha256 of what `dd if=file` reads (streamed, so devices and big files are fine). */
export function ddSha256(file: string, opts: DdOptions = {}): Promise<{ sha256: string; bytes: number }> {
  const args = [`if=${file}`, `bs=${opts.bs ?? 1024 * 1024}`, 'status=none']
  if (opts.skip !== undefined) args.push(`skip=${opts.skip}`)
  if (opts.count !== undefined) args.push(`count=${opts.count}`)
  if (opts.iflag?.length) args.push(`iflag=${opts.iflag.join(',')}`)
  return new Promise((resolve, reject) => {
    const child = spawn('dd', args, { stdio: ['ignore', 'pipe', 'pipe'] })
    const h = createHash('sha256')
    let bytes = 0
    let stderr = ''
    child.stdout.on('data', (b: Buffer) => {
      bytes += b.length
      h.update(b)
    })
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()))
    child.on('error', reject)
    child.on('close', (code) =>
      code === 0 ? resolve({ sha256: h.digest('hex'), bytes }) : reject(new Error(`dd ${args.join(' ')}: exit ${code}: ${stderr.trim()}`)),
    )
  })
}

/** Read both files with dd and compare their hashes. */
export async function ddCompare(fileA: string, fileB: string, opts: DdOptions = {}): Promise<{ equal: boolean; a: string; b: string; bytesA: number; bytesB: number }> {
  const [a, b] = await Promise.all([ddSha256(fileA, opts), ddSha256(fileB, opts)])
  return { equal: a.sha256 === b.sha256 && a.bytes === b.bytes, a: a.sha256, b: b.sha256, bytesA: a.bytes, bytesB: b.bytes }
}
