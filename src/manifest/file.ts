// The manifest file itself, whatever its version: opening it for reading with one-line errors, and
// writing it atomically (readers on the other host see the old file or the new one, never half).
import crypto from 'node:crypto'
import fs from 'node:fs'
import nodePath from 'node:path'
import { ManifestError } from '../errors'

export function openManifest(path: string): number {
  try {
    return fs.openSync(path, 'r')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw new ManifestError(`manifest ${path} does not exist`)
    throw new ManifestError(`cannot open manifest ${path}: ${code ?? (err as Error).message}`)
  }
}


export function writeAtomicWith(path: string, write: (fd: number) => void): void {
  const dir = nodePath.dirname(path)
  const tmp = nodePath.join(dir, `.${nodePath.basename(path)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`)
  let fd: number | undefined = fs.openSync(tmp, 'wx')
  try {
    write(fd)
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    fd = undefined
    fs.renameSync(tmp, path)
  } catch (err) {
    if (fd !== undefined) closeQuietly(fd)
    try { fs.unlinkSync(tmp) } catch { /* already gone */ }
    throw err
  }
  fsyncDir(dir)
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

function closeQuietly(fd: number): void {
  try { fs.closeSync(fd) } catch { /* the original error matters more */ }
}

export function writeAll(fd: number, buf: Buffer): void {
  let done = 0
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done)
}

