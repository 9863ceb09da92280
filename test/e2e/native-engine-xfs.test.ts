// The native engine on XFS in an MBR partition: a frozen image exported, mounted in this process, read
// back and backed up with tar, compared with the source to the nanosecond. (test/e2e/native-engine.test.ts
// has the ext4 scenario and the edges.)
import t from 'tap'
import * as path from 'node:path'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { loadImage } from '../../src/mover/load'
import { NS, isSocket, mountNative, exportPopulated, type Mounted } from '../helpers/native-mount'

t.test('native engine on XFS in an MBR partition: the view equals the source', async (t) => {
  await exportPopulated(t, { fs: 'xfs', partition: 'mbr' }, async (data, manifest, state) => {
    const source = await snapshotTree(data, { timePrecisionNs: NS })
    const image = loadImage(manifest, { deviceOverrides: new Map() })
    let view: Mounted | undefined
    try {
      view = await mountNative(state, 'view', image, path.join(state, 'view.log'))
      t.same(diffTrees(source, await snapshotTree(view.mnt, { timePrecisionNs: NS })), [], 'the view')
      const tarOut = path.join(state, 'tar')
      await tarRoundTrip(view.mnt, tarOut)
      t.same(diffTrees(source, await snapshotTree(tarOut, { timePrecisionNs: NS }), { ignorePaths: isSocket(source) }), [], 'tar of the view')
    } finally {
      await view?.close()
      for (const d of image.devices) d.close()
    }
  })
})
