// A version 2 manifest read whole into objects, for the commands that want every inode at once
// (inspect, release, remap's cache): the reference reader collects, then the tree is checked.
import type { InodeSink } from '../stream'
import type { Inode, Manifest } from '../types'
import { checkInodeTree, type HeaderFacts } from '../validate'
import { streamManifestV2 } from './read'

export function readWholeV2(path: string, key?: Buffer): Manifest {
  const inodes: Inode[] = []
  let byteNames = false
  const collect: InodeSink = {
    begin: (_header: Record<string, unknown>, facts: HeaderFacts) => { byteNames = facts.byteNames },
    inode: (n: Inode) => { inodes.push(n) },
    finish: (root: number) => checkInodeTree(root, inodes, byteNames),
  }
  const header = streamManifestV2(path, collect, key)
  return { ...header, inodes }
}
