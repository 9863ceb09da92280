// A path for messages: which name of the tree an inode number stands for.
import type { Manifest } from './types'

/**
 * The first path (breadth first from the root, "/"-separated) that reaches inode `ino`, or undefined.
 * Linear in the tree: for error messages only, never per request.
 */
export function pathOfInode(manifest: Pick<Manifest, 'root' | 'inodes'>, ino: number): string | undefined {
  const byIno = new Map(manifest.inodes.map((i) => [i.ino, i]))
  const seen = new Set<number>()
  const queue = [{ at: manifest.root, path: '/' }]
  for (const { at, path } of queue) {
    if (at === ino) return path
    if (seen.has(at)) continue
    seen.add(at)
    for (const e of byIno.get(at)?.entries ?? []) queue.push({ at: e.ino, path: `${path === '/' ? '' : path}/${e.name}` })
  }
  return undefined
}
