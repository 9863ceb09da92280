// The tree checks of a streamed manifest, on compact arrays instead of inode objects: the same rules
// and messages as validate.ts's checkTree (root, entries naming existing inodes, one parent per
// directory, no cycles, no orphans). The walk is breadth-first from the root and numbers the inodes
// as it reaches them, which is the order the native engine's tables want (src/native-engine/stream-tables.ts).
import { bad, quote } from './validate'

/** Inodes by position in the manifest's list; directory entries by position in the sink's table. */
export interface CompactTree {
  readonly count: number
  ino(i: number): number
  kind(i: number): string
  isDir(i: number): boolean
  /** Position of inode `ino`, or -1. */
  indexOf(ino: number): number
  /** A directory's entries: entryFirst(i) .. entryFirst(i) + entryCount(i) - 1. */
  entryFirst(i: number): number
  entryCount(i: number): number
  entryIno(k: number): number
  entryName(k: number): string
}

export interface TreeOrder {
  /** New index (breadth-first, root 0) → position in the list. */
  order: Uint32Array
  /** Position → new index. */
  newIndex: Int32Array
  /** New index → new index of the directory it was first reached from (the root: 0). */
  parent: Uint32Array
  /** New index → the entry that first named it (the root: -1), for paths in log lines. */
  nameEntry: Int32Array
  /** Entry → new index of the inode it names. */
  entryChild: Uint32Array
}

/** Throws ManifestError on the first problem; `entries` is the total number of entries. */
export function walkTree(tree: CompactTree, root: number, entries: number): TreeOrder {
  const n = tree.count
  const rootPos = tree.indexOf(root)
  if (rootPos === -1) bad('manifest', `root inode ${root} is missing from the inode list`)
  if (!tree.isDir(rootPos)) bad('manifest', `root inode ${root} is a ${tree.kind(rootPos)}, not a dir`)

  const order = new Uint32Array(n)
  const newIndex = new Int32Array(n).fill(-1)
  const parent = new Uint32Array(n)
  const nameEntry = new Int32Array(n).fill(-1)
  const entryChild = new Uint32Array(entries)
  /** Position of each directory's parent; -1 until reached (and for the root). */
  const parentPos = new Int32Array(n).fill(-1)
  order[0] = rootPos
  newIndex[rootPos] = 0
  let reached = 1
  for (let next = 0; next < reached; next++) {
    const dirPos = order[next]!
    if (!tree.isDir(dirPos)) continue
    const first = tree.entryFirst(dirPos)
    const end = first + tree.entryCount(dirPos)
    for (let k = first; k < end; k++) {
      const childIno = tree.entryIno(k)
      const child = tree.indexOf(childIno)
      if (child === -1) bad(`inode ${tree.ino(dirPos)}`, `entry ${quote(tree.entryName(k))} points at inode ${childIno}, which does not exist`)
      if (tree.isDir(child)) {
        if (child === rootPos) bad(`inode ${tree.ino(dirPos)}`, `entry ${quote(tree.entryName(k))} points back at the root directory (a cycle)`)
        if (newIndex[child] !== -1) rejectSecondParent(tree, parentPos, child, dirPos, tree.entryName(k))
        parentPos[child] = dirPos
      }
      if (newIndex[child] === -1) {
        newIndex[child] = reached
        order[reached] = child
        parent[reached] = next
        nameEntry[reached] = k
        reached++
      }
      entryChild[k] = newIndex[child]!
    }
  }
  if (reached < n) bad(`inode ${tree.ino(newIndex.indexOf(-1))}`, 'is not reachable from the root (an orphan)')
  return { order, newIndex, parent, nameEntry, entryChild }
}

/** A directory reached a second time: say whether it is its own ancestor (a cycle) or has two parents. */
function rejectSecondParent(tree: CompactTree, parentPos: Int32Array, child: number, from: number, name: string): never {
  const childIno = tree.ino(child)
  for (let up = from; up !== -1; up = parentPos[up]!) {
    if (up === child) bad(`inode ${tree.ino(from)}`, `entry ${quote(name)} points at directory ${childIno}, its own ancestor (a cycle)`)
  }
  const first = tree.ino(parentPos[child]!)
  if (parentPos[child] === from) bad(`inode ${first}`, `directory ${childIno} has two parents: it is entered twice here, the second time as ${quote(name)}`)
  bad(`inode ${childIno}`, `directory has two parents: inode ${first} and inode ${tree.ino(from)} (entry ${quote(name)})`)
}
