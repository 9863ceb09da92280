// --pre-freeze and --post-thaw: order, environment, a failing pre-freeze leaving nothing behind, and
// post-thaw running also when taking the image fails.
import t from 'tap'
import { existsSync, promises as fsp, readFileSync } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { run } from '../helpers/exec'
import { extfs, release, scratchDir } from '../helpers/extfs'

/** A hook that appends its name and environment to `log` (one line per hook). */
const logHook = (log: string) => `echo "$EXTFS_HOOK status=$EXTFS_IMAGE_STATUS id=$EXTFS_IMAGE_ID mech=$EXTFS_MECHANISM mnt=$EXTFS_MOUNTPOINT" >> ${log}`

t.test('hooks on XFS reflink (clone set) and ext4 (freeze)', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    await fsp.mkdir(data)
    await fsp.writeFile(path.join(data, 'a'), 'a\n')

    await t.test('a failing pre-freeze aborts with nothing left behind', async (t) => {
      const manifest = path.join(state, 'fail.json')
      const log = path.join(state, 'fail.log')
      const r = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot', '--pre-freeze', 'exit 3', '--post-thaw', logHook(log)])
      t.equal(r.code, 8, 'exit code Export')
      t.match(r.stderr, /^extfs: pre-freeze hook exited with status 3: exit 3; nothing was exported\n$/)
      for (const f of [manifest, `${manifest}.config-id`, `${manifest}.frozen-image`, log]) t.notOk(existsSync(f), `no ${path.basename(f)}`)
      t.notOk(existsSync(path.join(fs.mountpoint, '.extfs-images')), 'no clone directory')
    })

    await t.test('pre-freeze, then post-thaw after the last clone, with the image in the environment', async (t) => {
      const manifest = path.join(state, 'ok.json')
      const log = path.join(state, 'ok.log')
      try {
        const r = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot', '--pre-freeze', logHook(log), '--post-thaw', logHook(log)])
        t.equal(r.code, 0, r.stderr)
        const id = JSON.parse(readFileSync(manifest, 'utf8')).frozenImage.imageId
        t.same(readFileSync(log, 'utf8').trim().split('\n'), [
          `pre-freeze status= id=${id} mech=clone-set mnt=${fs.mountpoint}`,
          `post-thaw status=taken id=${id} mech=clone-set mnt=${fs.mountpoint}`,
        ])
      } finally {
        await release(manifest)
      }
    })
  })

  await withLoopFs({ fs: 'ext4' }, async (fs) => {
    await t.test('post-thaw runs when taking the image fails (filesystem already frozen)', async (t) => {
      const manifest = path.join(state, 'frozen.json')
      const log = path.join(state, 'frozen.log')
      await run('fsfreeze', ['-f', fs.mountpoint])
      try {
        const r = await extfs(['export', fs.mountpoint, '--output', manifest, '--pre-freeze', logHook(log), '--post-thaw', logHook(log)])
        t.equal(r.code, 8)
        t.match(r.stderr, /already frozen/)
        t.match(readFileSync(log, 'utf8'), /^pre-freeze .*mech=freeze.*\npost-thaw status=failed /)
        t.notOk(existsSync(`${manifest}.frozen-image`), 'no journal left')
      } finally {
        t.equal((await run('fsfreeze', ['-u', fs.mountpoint])).code, 0, 'still frozen by us, not thawed by the failed export')
      }
    })

    await t.test('freeze: post-thaw runs once the filesystem is frozen', async (t) => {
      const manifest = path.join(state, 'freeze.json')
      const log = path.join(state, 'freeze.log')
      try {
        const r = await extfs(['export', fs.mountpoint, '--output', manifest, '--post-thaw', logHook(log)])
        t.equal(r.code, 0, r.stderr)
        t.match(readFileSync(log, 'utf8'), /^post-thaw status=taken id=[0-9a-f]{32} mech=freeze /)
        t.ok(existsSync(`${manifest}.frozen-image`), 'journal while frozen')
      } finally {
        await release(manifest)
      }
      t.notOk(existsSync(`${manifest}.frozen-image`), 'release removed the journal')
    })
  })
})
