// `extfs backup --mountpoint`: the nightly wrapper mounts on the same path every night, so restic finds
// last night's snapshot as its parent and reads no file again. On a new private directory (the default)
// it finds none and reads every file again (docs/clients.md).
import t from 'tap'
import { promises as fsp } from 'node:fs'
import * as path from 'node:path'
import { runOk } from '../helpers/exec'
import { extfs, release, scratchDir } from '../helpers/extfs'
import { isMounted, withLoopFs } from '../helpers/loopfs'
import { seededBytes } from '../helpers/populate'

interface Summary {
  files_new: number
  files_changed: number
  files_unmodified: number
}

t.test('extfs backup --mountpoint: restic through the nightly wrapper reads nothing again', async (t) => {
  const scratch = await scratchDir(t, 'extfs-clients-')
  const env = { ...process.env, RESTIC_REPOSITORY: path.join(scratch, 'repo'), RESTIC_PASSWORD: 'extfs-test', XDG_CACHE_HOME: path.join(scratch, 'cache') }
  await runOk('restic', ['init', '--quiet'], { env })
  const mountpoint = path.join(scratch, 'nightly')
  await fsp.mkdir(mountpoint)
  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    for (let i = 0; i < 5; i++) await fsp.writeFile(path.join(data, `f${i}`), seededBytes(i + 1, 10_000 + i))

    /** One night: export, `extfs backup [extra] -- restic backup --json .`, release; restic's summary. */
    const night = async (extra: string[]): Promise<Summary> => {
      const manifest = path.join(scratch, 'nightly.json')
      try {
        const exp = await extfs(['export', data, '--output', manifest, '--frozen-image', 'freeze'])
        t.equal(exp.code, 0, `export: ${exp.stderr}`)
        const r = await extfs(['backup', manifest, ...extra, '--log-file', path.join(scratch, 'view.log'), '--', 'restic', 'backup', '--json', '.'], { env })
        t.equal(r.code, 0, `backup: ${r.stderr}`)
        return JSON.parse(r.stdout.split('\n').find((l) => l.includes('"message_type":"summary"')) ?? '{}') as Summary
      } finally {
        await release(manifest)
      }
    }

    t.match(await night(['--mountpoint', mountpoint]), { files_new: 5, files_changed: 0 }, 'the first night reads every file')
    t.match(await night(['--mountpoint', mountpoint]), { files_new: 0, files_changed: 0, files_unmodified: 5 }, 'on the same mountpoint the next night reads none again')
    t.notOk(isMounted(mountpoint), 'unmounted afterwards')
    t.same(await fsp.readdir(mountpoint), [], 'the mountpoint is kept, empty')
    t.match(await night([]), { files_new: 5 }, 'on a new private directory restic finds no parent: every file again')
  })
})
