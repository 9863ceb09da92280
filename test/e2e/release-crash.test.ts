// Crash-safe release: SIGKILL an export while it clones, then `extfs release` removes exactly what
// the journal lists (refusing a journal that names anything else) and touches none of the owner's files.
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, promises as fsp, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import * as path from 'node:path'
import { withLoopFs } from '../helpers/loopfs'
import { snapshotTree, diffTrees } from '../helpers/tree'
import { EXTFS, extfs, release, scratchDir } from '../helpers/extfs'
import { jsonResult } from '../helpers/json-results'

const FILES = 4000
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('an export killed half-way is cleaned up by release', async (t) => {
  const state = await scratchDir(t)
  await withLoopFs({ fs: 'xfs', mkfsArgs: ['-m', 'reflink=1'] }, async (fs) => {
    const data = path.join(fs.mountpoint, 'data')
    for (let d = 0; d < 40; d++) {
      await fsp.mkdir(path.join(data, `d${d}`), { recursive: true })
      for (let f = 0; f < FILES / 40; f++) await fsp.writeFile(path.join(data, `d${d}`, `f${f}`), `file ${d}/${f}\n`.repeat(50))
    }
    const before = await snapshotTree(data, { timePrecisionNs: 1, xattrs: false, acls: false })
    const manifest = path.join(state, 'crash.json')
    const images = path.join(fs.mountpoint, '.extfs-images')
    try {
      const child = spawn(EXTFS, ['export', data, '--output', manifest, '--frozen-image', 'snapshot'], { stdio: 'ignore' })
      // Kill once some, but not all, files are cloned.
      let clones = 0
      for (const end = Date.now() + 60_000; Date.now() < end && child.exitCode === null; await sleep(5)) {
        const dirs = existsSync(images) ? readdirSync(images) : []
        clones = dirs.length ? readdirSync(path.join(images, dirs[0])).length : 0
        if (clones > 200) break
      }
      child.kill('SIGKILL')
      await new Promise((r) => child.once('close', r))
      t.ok(clones > 200 && clones < FILES, `killed while cloning (${clones} of ${FILES} cloned)`)
      t.notOk(existsSync(manifest), 'no manifest')
      const journalPath = `${manifest}.frozen-image`
      const journal = JSON.parse(readFileSync(journalPath, 'utf8'))
      t.equal(journal.imagePath, path.join(images, journal.imageId), 'the journal names the clone directory')

      // A journal naming anything but the image directory is refused, and nothing is removed.
      writeFileSync(journalPath, JSON.stringify({ ...journal, imagePath: data }))
      const bad = await extfs(['release', manifest])
      t.equal(bad.code, 8, 'tampered journal refused')
      t.match(bad.stderr, /is not where extfs keeps image .*left untouched/)
      writeFileSync(journalPath, JSON.stringify(journal))

      // (Its sentence without --json, from the same object: test/unit/json-results.test.ts.)
      const r = jsonResult(t, await extfs(['release', manifest, '--json']), 'extfs.release/1', 'release')
      t.same(r, { schema: 'extfs.release/1', manifest, fromJournal: true, frozenImage: { kind: 'snapshot', mountpoint: fs.mountpoint }, removed: journal.imagePath },
        'release --json: from the journal, no config ID (export published no record), the clone directory removed')
      t.same(existsSync(images) ? readdirSync(images) : [], [], 'no image left in .extfs-images')
      t.notOk(existsSync(journalPath), 'journal removed')
      t.same(diffTrees(before, await snapshotTree(data, { timePrecisionNs: 1, xattrs: false, acls: false })), [], "the owner's files are untouched")

      const twice = await extfs(['release', manifest, '--json'])
      t.equal(twice.code, 3, 'a second release finds nothing to do')
      t.match(twice.stderr, /^extfs: .*nothing to release\n$/)
      t.equal(twice.stdout, '', 'and prints nothing on stdout, also with --json')

      const again = await extfs(['export', data, '--output', manifest, '--frozen-image', 'snapshot'])
      t.equal(again.code, 0, `a new export to the same manifest works after release: ${again.stderr}`)
    } finally {
      await release(manifest)
    }
    t.same(existsSync(images) ? readdirSync(images) : [], [], 'release of the new export removed its clones')
  })
})
