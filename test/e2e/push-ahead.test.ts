// Push-ahead (native/view/push.c) through the kernel: a view mounted in this process, its cached pages
// counted with fincore while a reader stays put, then read on past the window, then unmounted mid-push.
import t from 'tap'
import { createHash } from 'node:crypto'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { settledCachedBytes } from '../helpers/page-cache'
import { withLoopFs, isMounted } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'
import { ddCompare, ddSha256 } from '../helpers/backup-tools'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir } from '../helpers/extfs'
import { loadImage } from '../../src/mover/load'
import { mountNative, type Mounted } from '../helpers/native-mount'

t.test('push-ahead: a sequential reader finds the file cached, never more than the window ahead', async (t) => {
  // native/view/push.c. fincore counts the view's cached pages: a read of the first 64 KiB alone
  // makes readahead cache well under 1 MiB, so anything past that was pushed.
  const MiB = 1024 * 1024
  const WINDOW = 256 * MiB // PUSH_AHEAD
  const state = await scratchDir(t, 'extfs-push-')
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    const whole = seededBytes(31, 24 * MiB + 999)
    await fsp.writeFile(path.join(data, 'whole'), whole)
    // 700 MiB, mostly holes (zeros), with 1 MiB of data every 64 MiB: longer than the window.
    const fh = await fsp.open(path.join(data, 'window'), 'w')
    for (let off = 0; off < 700 * MiB; off += 64 * MiB) await fh.write(seededBytes(off / MiB, MiB), 0, MiB, off)
    await fh.truncate(700 * MiB)
    await fh.close()
    const manifest = path.join(state, 'm.json')
    const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
    t.equal(exp.code, 0, `export: ${exp.stderr}`)
    const image = loadImage(manifest, { deviceOverrides: new Map() })
    let view: Mounted | undefined
    try {
      view = await mountNative(state, 'view', image, path.join(state, 'view.log'))
      const v = view.mnt

      const h = await fsp.open(path.join(v, 'whole'), 'r')
      try {
        await h.read(Buffer.alloc(64 * 1024), 0, 64 * 1024, 0)
        const got = await settledCachedBytes(path.join(v, 'whole'), whole.length - 4096)
        t.ok(got >= whole.length - 4096, `after 64 KiB read, the whole 24 MiB file is cached (${got} bytes)`)
      } finally {
        await h.close()
      }
      t.equal((await ddSha256(path.join(v, 'whole'), { bs: 10240 })).sha256, createHash('sha256').update(whole).digest('hex'), 'and reads byte-exact')

      const w = await fsp.open(path.join(v, 'window'), 'r')
      try {
        await w.read(Buffer.alloc(64 * 1024), 0, 64 * 1024, 0)
        const got = await settledCachedBytes(path.join(v, 'window'))
        t.ok(got >= WINDOW - 8 * MiB, `a 700 MiB file is pushed up to the window (${got} bytes cached)`)
        t.ok(got <= WINDOW + 24 * MiB, 'and not further while the reader stays put (window + readahead)')
        // Read on through the trip pages and past the window, with an open handle still holding the job.
        const r = await ddCompare(path.join(data, 'window'), path.join(v, 'window'), { bs: 10240 })
        t.ok(r.equal, `the whole file reads byte-exact past the window (${r.bytesB} bytes)`)
      } finally {
        await w.close()
      }

      // A job still pushing when the view unmounts: unmount ends it and returns.
      await runOk('dd', [`if=${path.join(v, 'window')}`, 'iflag=nocache', 'count=0', 'status=none'])
      const again = await fsp.open(path.join(v, 'window'), 'r')
      await again.read(Buffer.alloc(4096), 0, 4096, 0)
      await again.close()
      await view.close()
      t.notOk(isMounted(v), 'unmounted with a push under way')
    } finally {
      await view?.close()
      for (const d of image.devices) d.close()
      await release(manifest)
    }
  })
})
