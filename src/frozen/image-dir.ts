// The hidden per-image directory a snapshot image lives in, `<mountpoint>/.extfs-images/<image id>/`.
// A marker file inside names the image, so `release` removes a directory only when export made it.
import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { ExportError } from '../errors'

/** Hidden, at the top of the mount, so `ls` and the owner's globs pass it by; the walk skips it. */
export const IMAGES_DIR = '.extfs-images'
/** Not a number, so it can never collide with a clone (clones are named by inode number). */
const MARKER = '.extfs-image'

/** 128 random bits, hex: names the image directory and appears in hooks' environment. */
export function newImageId(): string {
  return randomBytes(16).toString('hex')
}

export function imagesRootOf(mountpoint: string): string {
  return path.join(mountpoint, IMAGES_DIR)
}

export function imageDirOf(mountpoint: string, imageId: string): string {
  return path.join(imagesRootOf(mountpoint), imageId)
}

function markerText(imageId: string): string {
  return JSON.stringify({ format: 'extfs-image-marker', imageId }) + '\n'
}

/** Create the image directory (root-only) and its marker; refuses a planted symlink on the way. */
export function createImageDir(mountpoint: string, imageId: string): string {
  const root = imagesRootOf(mountpoint)
  try {
    fs.mkdirSync(root, { mode: 0o700 })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new ExportError(`cannot create ${root}: ${(err as Error).message}`)
  }
  if (!fs.lstatSync(root).isDirectory()) throw new ExportError(`${root} exists and is not a directory: remove it or use --frozen-image freeze`)
  const dir = imageDirOf(mountpoint, imageId)
  fs.mkdirSync(dir, { mode: 0o700 })
  const fd = fs.openSync(path.join(dir, MARKER), fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600)
  try {
    fs.writeSync(fd, markerText(imageId))
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  return dir
}

export type Ownership = 'ours' | 'absent' | 'empty' | 'foreign'

/**
 * Whether `dir` is the image directory export made for `imageId`: a real directory (not a symlink)
 * holding our marker. `empty`: a directory without marker and without content, which is what a
 * crash between mkdir and writing the marker leaves.
 */
export function ownershipOf(dir: string, imageId: string): Ownership {
  let st: fs.Stats
  try {
    st = fs.lstatSync(dir)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'absent'
    throw err
  }
  if (!st.isDirectory()) return 'foreign'
  let marker: string
  try {
    marker = fs.readFileSync(path.join(dir, MARKER), 'utf8')
  } catch {
    return fs.readdirSync(dir).length === 0 ? 'empty' : 'foreign'
  }
  return marker === markerText(imageId) ? 'ours' : 'foreign'
}

/**
 * Remove the image directory's remaining content (plain files we created) and the directory. The
 * images root stays, empty: creating and removing it each night would change the owner's mount root's
 * mtime and ctime, and the owner's own incremental backups would see that directory changed.
 */
export function removeImageDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true })
}
