// A version 2 manifest through `extfs mount`: a real ext4 image exported (v1), rewritten as v2 by the
// TypeScript writer, mounted with the CLI (the view loads it in C into mapped tables:
// native/view/load2.c) and backed up with tar; the tar of the v2 view equals the tar of the v1 view.
// A v2 body that C refuses ends `extfs mount` with exit 3, one line, nothing mounted.
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs, isMounted } from '../helpers/loopfs'
import { populateEveryKind } from '../helpers/populate'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { tarRoundTrip } from '../helpers/backup-tools'
import { extfs, release, scratchDir, withView, withoutProgress } from '../helpers/extfs'
import { readCheckedManifest } from '../../src/manifest/io'
import { writeManifestV2 } from '../../src/manifest/v2/write'
import { TRAILER_BYTES } from '../../src/manifest/v2/format'

const NS = 1

t.test('a v2 manifest mounts with extfs mount and tars as its v1 twin', async (t) => {
  const state = await scratchDir(t, 'extfs-v2-')
  await withLoopFs({ fs: 'ext4' }, async (lfs) => {
    const data = path.join(lfs.mountpoint, 'data')
    await fsp.mkdir(path.join(data, 'many'), { recursive: true })
    for (let i = 0; i < 500; i++) await fsp.writeFile(path.join(data, 'many', `${'ü'.repeat(i % 5)}e-${i}`), `${i}\n`)
    await populateEveryKind(data)
    const v1 = path.join(state, 'm.json')
    try {
      const exp = await extfs(['export', data, '--output', v1, '--frozen-image', 'freeze'])
      t.equal(exp.code, 0, `export: ${exp.stderr}`)
      const m = readCheckedManifest(v1)
      const { inodes, signature: _s, ...header } = m
      const v2 = path.join(state, 'm.extfs')
      writeManifestV2(v2, header, inodes)

      const tars: Record<string, string> = {}
      for (const [name, file] of [['v1', v1], ['v2', v2]] as const) {
        await withView(file, async (mnt) => {
          t.equal((await fsp.stat(mnt)).ino, m.root, `${name}: the root answers with the image root inode`)
          tars[name] = path.join(state, `tar-${name}`)
          await tarRoundTrip(mnt, tars[name]!)
        })
      }
      const a = await snapshotTree(tars.v1!, { timePrecisionNs: NS })
      const b = await snapshotTree(tars.v2!, { timePrecisionNs: NS })
      t.ok(a.size > 500, `${a.size} paths`)
      t.same(diffTrees(a, b), [], 'the tar of the v2 view equals the tar of the v1 view')

      // One byte of the body's last INODE record changed: C refuses it, nothing is mounted.
      const bytes = await fsp.readFile(v2)
      const bad = Buffer.from(bytes)
      bad[bytes.length - TRAILER_BYTES - 1] = 0x80 // a varint that runs into the trailer
      const badFile = path.join(state, 'bad.extfs')
      await fsp.writeFile(badFile, bad)
      const mnt = path.join(state, 'bad-mnt')
      await fsp.mkdir(mnt)
      const r = await extfs(['mount', badFile, mnt, '--log-file', path.join(state, 'bad.log')])
      t.equal(r.code, 3, `exit 3: ${r.stderr}`)
      t.match(r.stderr, /manifest .*bad\.extfs: (inode \d+|manifest): /, 'names the problem')
      t.equal(withoutProgress(r.stderr).trim().split('\n').length, 1, 'one line')
      t.notOk(isMounted(mnt), 'nothing mounted')
    } finally {
      await release(v1)
    }
  })
})
