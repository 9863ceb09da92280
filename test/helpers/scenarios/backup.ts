// The whole flow on real devices: export a frozen image of a populated filesystem, mount the manifest
// through FUSE with a given engine, back it up with tar, rsync and dd, and compare bytes and metadata
// with the source.
import type { Test } from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs, LoopFsOptions } from '../loopfs'
import { populateEveryKind } from '../populate'
import { snapshotTree, diffTrees, Tree } from '../tree'
import { tarRoundTrip, rsyncCopy, ddCompare } from '../backup-tools'
import { extfs, release, scratchDir, withView } from '../extfs'
import { useEngine, type Engine } from '../engines'

export interface Layout {
  name: string
  opts: LoopFsOptions
}

export const LAYOUTS = {
  ext4: { name: 'ext4 on a whole device', opts: { fs: 'ext4' } },
  ext4Gpt: { name: 'ext4 on a GPT partition', opts: { fs: 'ext4', partition: 'gpt' } },
  xfs: { name: 'XFS on a whole device', opts: { fs: 'xfs' } },
  xfsMbr: { name: 'XFS on an MBR partition', opts: { fs: 'xfs', partition: 'mbr' } },
} satisfies Record<string, Layout>

/** Views and copies of them are compared to the nanosecond, with the source as the engine serves it. */
const NS = { timePrecisionNs: 1 }

const isSocket = (tree: Tree) => (rel: string) => tree.get(rel)?.kind === 'socket'

export function backupRoundTrip(t: Test, layout: Layout, engine: Engine): Promise<unknown> {
  return t.test(`${layout.name}, ${engine.name} engine`, async (t) => {
    useEngine(engine)
    const state = await scratchDir(t)
    await withLoopFs(layout.opts, async (fs) => {
      const data = path.join(fs.mountpoint, 'data')
      await fsp.mkdir(data)
      const pop = await populateEveryKind(data)
      const manifest = path.join(state, 'nightly.json')
      try {
        const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
        t.equal(exp.code, 0, `export: ${exp.stderr}`)
        // Taken while frozen: this is the image the backup must reproduce, its times cut (floored) to
        // what the engine serves, so that every time of the view must match it exactly.
        const source = await snapshotTree(data, { timePrecisionNs: engine.timePrecisionNs })

        await withView(manifest, async (view) => {
          t.same(diffTrees(source, await snapshotTree(view, NS)), [], `the view itself equals the source (times exact to ${engine.timePrecisionNs} ns)`)

          const tarOut = path.join(state, 'tar')
          await tarRoundTrip(view, tarOut)
          const tarTree = await snapshotTree(tarOut, NS)
          t.same(diffTrees(source, tarTree, { ignorePaths: isSocket(source) }), [], 'tar of the view equals the source (tar skips sockets)')

          const rsyncOut = path.join(state, 'rsync')
          await rsyncCopy(view, rsyncOut)
          t.same(diffTrees(source, await snapshotTree(rsyncOut, NS)), [], 'rsync -aHAX of the view equals the source')

          for (const rel of [...pop.regular, ...pop.sparse, ...pop.fragmented, pop.preallocated.unwritten, pop.preallocated.partiallyWritten, pop.preallocated.keepSize]) {
            const r = await ddCompare(path.join(data, rel), path.join(view, rel), { bs: 65536 })
            t.ok(r.equal, `dd of ${rel} equals the source (${r.bytesA} bytes)`)
          }

          const [first, ...others] = pop.hardLinks[0]
          const ino = (await fsp.lstat(path.join(view, first))).ino
          for (const other of others) t.equal((await fsp.lstat(path.join(view, other))).ino, ino, `${other} shares ${first}'s inode`)
          t.equal((await fsp.lstat(path.join(view, first))).nlink, pop.hardLinks[0].length, 'nlink counts the names')
        })
      } finally {
        await release(manifest)
      }
    })
  })
}
