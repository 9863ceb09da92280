// btrfs read-only subvolume snapshots: atomic across one subvolume, made and removed with btrfs-progs.
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { ExportError } from '../errors'

/** The subvolume holding every top-level (FS_TREE) file; it cannot be snapshotted on its own terms. */
export const TOP_LEVEL_SUBVOLUME = 5
/** BTRFS_FIRST_FREE_OBJECTID: the inode number of every subvolume's root directory. */
const SUBVOLUME_ROOT_INO = 256n

function btrfs(args: string[]): string {
  try {
    return execFileSync('btrfs', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  } catch (err) {
    const e = err as { stderr?: string; message: string }
    throw new ExportError(`btrfs ${args.join(' ')}: ${(e.stderr || e.message).trim().split('\n')[0]}`)
  }
}

/** The id of the subvolume `realPath` lives in, and that subvolume's root directory. */
export function subvolumeOf(realPath: string): { id: number; root: string } {
  const id = Number(btrfs(['inspect-internal', 'rootid', realPath]).trim())
  // Each subvolume has its own st_dev; its root is the ancestor (or self) whose inode is 256.
  let dir = fs.lstatSync(realPath).isDirectory() ? realPath : path.dirname(realPath)
  const dev = fs.statSync(dir, { bigint: true }).dev
  for (;;) {
    const st = fs.statSync(dir, { bigint: true })
    if (st.dev === dev && st.ino === SUBVOLUME_ROOT_INO) return { id, root: dir }
    if (dir === '/') throw new ExportError(`${realPath}: cannot find the root of its btrfs subvolume`)
    dir = path.dirname(dir)
  }
}

/** A read-only snapshot of the subvolume rooted at `subvolumeRoot`, created at `dest` (must not exist). */
export function takeSnapshot(subvolumeRoot: string, dest: string): void {
  btrfs(['subvolume', 'snapshot', '-r', subvolumeRoot, dest])
}

/** True when `p` is the root of a btrfs subvolume (not merely a directory). */
export function isSubvolume(p: string): boolean {
  try {
    const st = fs.lstatSync(p, { bigint: true })
    if (!st.isDirectory() || st.ino !== SUBVOLUME_ROOT_INO) return false
    execFileSync('btrfs', ['subvolume', 'show', p], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

export function deleteSnapshot(p: string): void {
  btrfs(['subvolume', 'delete', p])
}
