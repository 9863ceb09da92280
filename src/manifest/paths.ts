// A path for messages: which name of the tree an inode number stands for.
import type { Inode, Manifest } from './types'
import { breadthFirst } from './validate'

/**
 * The first path (breadth first from the root, "/"-separated) that reaches inode `ino`, or undefined.
 * The manifest may break the tree's rules (export names the file a refused manifest is about), so the
 * walk only follows what exists. Linear in the tree: for error messages only, never per request.
 */
export function pathOfInode(manifest: Pick<Manifest, 'root' | 'inodes'>, ino: number): string | undefined {
  const inodes = manifest.inodes
  const index = new Map<number, number>()
  inodes.forEach((n, i) => { if (!index.has(n.ino)) index.set(n.ino, i) })
  const rootPos = index.get(manifest.root)
  if (rootPos === undefined) return undefined
  if (manifest.root === ino) return '/'
  const entries = (i: number) => (inodes[i] as Inode).entries ?? []
  /** Position → the directory and entry that first reached it. */
  const via = new Map<number, [number, number]>()
  let found: number | undefined
  breadthFirst({
    count: inodes.length,
    ino: (i) => inodes[i]!.ino,
    kind: (i) => inodes[i]!.kind,
    indexOf: (n) => index.get(n) ?? -1,
    entryCount: (i) => entries(i).length,
    entryIno: (i, k) => entries(i)[k]!.ino,
    entryName: (i, k) => entries(i)[k]!.name,
  }, rootPos, (dir, k, child, seen) => {
    if (child === -1 || seen) return false
    via.set(child, [dir, k])
    if (inodes[child]!.ino !== ino) return false
    found = child
    return true
  })
  if (found === undefined) return undefined
  const parts: string[] = []
  for (let at = found; at !== rootPos; at = via.get(at)![0]) parts.push(entries(via.get(at)![0])[via.get(at)![1]]!.name)
  return '/' + parts.reverse().join('/')
}
