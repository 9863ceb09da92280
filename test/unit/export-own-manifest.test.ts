// A tree the mover's rules refuse is the source's problem: export says which file (exit 8), not which
// inode number (exit 3, as for a manifest from another host).
import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { sourcePathOf, writeOwnManifest } from '../../src/export/export'
import { ExitCode, ExtfsError } from '../../src/errors'
import { inodeOf, makeManifest } from '../helpers/manifest-factory'

t.test('a refused inode is named by its source path, exit 8', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-own-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const m = makeManifest()
  inodeOf(m, 2).uid = -1 // reached as /a and /sub/hard: breadth first, /a
  const output = path.join(dir, 'm.json')
  const err = t.throws(() => writeOwnManifest(output, m, (inView) => sourcePathOf(inView, false, ['/srv/data']))) as ExtfsError
  t.equal(err.exitCode, ExitCode.Export)
  t.match(err.message, /^\/srv\/data\/a: the manifest cannot carry it: uid must be an integer/)
  t.notOk(fs.existsSync(output), 'nothing written')

  const header = makeManifest()
  header.blockSize = 3
  const other = t.throws(() => writeOwnManifest(output, header, (p) => p)) as ExtfsError
  t.equal(other.exitCode, ExitCode.BadManifest, 'a problem of no inode stays what it is')
})

t.test('source paths under a synthetic root', async (t) => {
  t.equal(sourcePathOf('/b/c', true, ['/x/a', '/y/b']), '/y/b/c')
  t.equal(sourcePathOf('/a', true, ['/x/a']), '/x/a', 'a single file exported')
  t.equal(sourcePathOf('/c', false, ['/x/a']), '/x/a/c')
})
