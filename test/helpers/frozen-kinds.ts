// The three kinds of frozen image a nightly export takes (docs/frozen-images.md), each on a fresh
// filesystem, with the relocation that can move an image's blocks while it exists:
//   ext4 frozen (FIFREEZE), in a VM image file on XFS exported --through-loop: nothing moves inside a
//     frozen filesystem, but xfs_fsr on the host moves the image file's blocks under it;
//   btrfs read-only snapshot of a subvolume: btrfs balance relocates the snapshot's extents;
//   XFS reflink clone set: xfs_fsr defragments the clones.
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { runOk } from './exec'
import { createLoopFs, destroyLoopFs, withLoopFs, type LoopFs } from './loopfs'
import { createNestedFs, destroyNestedFs, type NestedFs } from './nested-loop'
import { withBtrfs } from './btrfs'
import { readJson } from './tamper'

export interface Source {
  /** The directory exported each night. */
  data: string
  /** export's options for this kind. */
  exportArgs: string[]
  /** Move blocks of the image behind `manifest` (exported, not yet released); `files`: relative paths of fragmented regular files. */
  relocate(manifest: string, files: string[]): Promise<void>
}

export interface FrozenKind {
  name: string
  /** Make the filesystem, run fn with an empty `data` directory on it, always tear it all down. */
  withSource(fn: (src: Source) => Promise<void>): Promise<void>
}

const ext4Freeze: FrozenKind = {
  name: 'ext4 freeze',
  async withSource(fn) {
    let host: LoopFs | undefined
    let guest: NestedFs | undefined
    try {
      host = await createLoopFs({ fs: 'xfs' })
      guest = await createNestedFs(path.join(host.mountpoint, 'guest.img'), { sizeMiB: 64, fragmented: true })
      const image = guest.image
      const data = path.join(guest.mountpoint, 'data')
      await fsp.mkdir(data)
      await fn({
        data,
        // The walker's v1 manifest: the tests of these kinds read it as JSON.
        exportArgs: ['--frozen-image', 'freeze', '--through-loop', '--mapper', 'vfs'],
        relocate: async () => {
          await runOk('xfs_fsr', [image], { timeoutMs: 120_000 })
        },
      })
    } finally {
      // Inner before outer; destroyNestedFs thaws a filesystem left frozen.
      const problems = [...(guest ? await destroyNestedFs(guest) : []), ...(host ? await destroyLoopFs(host) : [])]
      if (problems.length) throw new Error(`ext4 in XFS cleanup: ${problems.join('; ')}`)
    }
  },
}

const btrfsSnapshot: FrozenKind = {
  name: 'btrfs snapshot',
  withSource: (fn) =>
    withBtrfs({ devices: 1, data: 'single', metadata: 'dup', sizeMiB: 512 }, async (fs) => {
      // The subvolume itself is exported: the view's root is the snapshot's root directory.
      const data = path.join(fs.mountpoint, 'data')
      await runOk('btrfs', ['subvolume', 'create', data])
      await fn({
        data,
        exportArgs: ['--frozen-image', 'snapshot'],
        relocate: async () => {
          await runOk('btrfs', ['balance', 'start', '-d', '--full-balance', fs.mountpoint], { timeoutMs: 120_000 })
        },
      })
    }),
}

const xfsCloneSet: FrozenKind = {
  name: 'XFS clone set',
  withSource: (fn) =>
    withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
      const data = path.join(fs.mountpoint, 'data')
      await fsp.mkdir(data)
      await fn({
        data,
        exportArgs: ['--frozen-image', 'snapshot'],
        relocate: async (manifest, files) => {
          // The clones are named by the original's inode number in the image directory.
          const imagePath = (await readJson(manifest)).frozenImage.imagePath as string
          for (const rel of files) {
            const ino = (await fsp.stat(path.join(data, rel))).ino
            await runOk('xfs_fsr', [path.join(imagePath, String(ino))], { timeoutMs: 60_000 })
          }
        },
      })
    }),
}

export const FROZEN_KINDS: FrozenKind[] = [ext4Freeze, btrfsSnapshot, xfsCloneSet]
