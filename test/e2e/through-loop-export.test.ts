// `extfs export --through-loop` end to end, the way VM images are backed up: a guest filesystem (ext4)
// lives in an image file on the host's XFS. A reflink clone of the image stands in for a thin snapshot:
// attached read-only and mounted read-only, it is a frozen image the guest never blocks on. The export
// maps its files through both levels onto the disk under the XFS, the mover backs them up from there,
// and the guest keeps writing to its own image meanwhile.
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { createLoopFs, destroyLoopFs, type LoopFs } from '../helpers/loopfs'
import { attachReadOnly, createNestedFs, destroyNestedFs, type NestedFs } from '../helpers/nested-loop'
import { runOk } from '../helpers/exec'
import { populateEveryKind, seededBytes } from '../helpers/populate'
import { snapshotTree, diffTrees, Tree } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView } from '../helpers/extfs'
import { readJson } from '../helpers/tamper'

const sockets = (tree: Tree) => (rel: string) => tree.get(rel)?.kind === 'socket' // tar skips sockets

t.test('a VM image clone, exported through its loop device to the disk underneath', async (t) => {
  const scratch = await scratchDir(t)
  let host: LoopFs | undefined
  let guest: NestedFs | undefined
  let frozen: NestedFs | undefined
  t.teardown(async () => {
    if (frozen) await destroyNestedFs(frozen)
    if (guest) await destroyNestedFs(guest)
    if (host) await destroyLoopFs(host)
  })
  host = await createLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] })
  guest = await createNestedFs(path.join(host.mountpoint, 'guest.img'), { sizeMiB: 96 })
  await populateEveryKind(guest.mountpoint)
  await fsp.writeFile(path.join(guest.mountpoint, 'disk-image-data'), seededBytes(9, 5 * 1024 * 1024 + 17))
  await runOk('sync', [])

  // The guest's "snapshot": a reflink clone of its image, attached and mounted read-only.
  const cloneImage = path.join(host.mountpoint, 'guest-nightly.img')
  await runOk('cp', ['--reflink=always', guest.image, cloneImage])
  frozen = await attachReadOnly(cloneImage, { partitioned: false })
  const expected = await snapshotTree(frozen.mountpoint, { timePrecisionNs: 1 })

  const manifest = path.join(scratch, 'vm.json')
  const withoutFlag = path.join(scratch, 'vm-loop.json')
  const exp = await extfs(['export', frozen.mountpoint, '--output', manifest, '--frozen-image', 'none', '--through-loop'])
  t.equal(exp.code, 0, `export --through-loop: ${exp.stderr}`)
  const plain = await extfs(['export', frozen.mountpoint, '--output', withoutFlag, '--frozen-image', 'none'])
  t.equal(plain.code, 0, `export without the flag: ${plain.stderr}`)
  try {
    const m = await readJson(manifest)
    t.same(m.devices.map((d: { hint: string }) => d.hint), [host.loopDevice], 'through the loop device: the only device is the disk under the host filesystem')
    t.same((await readJson(withoutFlag)).devices.map((d: { hint: string }) => d.hint), [frozen.loopDevice], 'without the flag: the loop device itself')

    // The guest keeps writing to its own image; the clone's blocks stay where they were.
    await fsp.writeFile(path.join(guest.mountpoint, 'disk-image-data'), seededBytes(10, 5 * 1024 * 1024 + 17))
    await fsp.rm(path.join(guest.mountpoint, 'regular'), { recursive: true })
    await runOk('sync', [])

    await withView(manifest, async (view) => {
      const restored = path.join(scratch, 'restored')
      await tarRoundTrip(view, restored)
      t.same(diffTrees(expected, await snapshotTree(restored, { timePrecisionNs: 1 }), { ignorePaths: sockets(expected) }), [], 'tar of the view equals the frozen guest filesystem')
    })
  } finally {
    await release(manifest)
    await release(withoutFlag)
  }
})
