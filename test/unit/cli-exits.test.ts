// Exits of the real CLI that no layer below chose: a reader of stdout that stops reading
// (`extfs inspect … | head`) ends it at once with 141 (ReaderGone, as a C tool killed by SIGPIPE) and
// nothing on stderr; a permission the system refuses (root without CAP_DAC_READ_SEARCH meeting a file
// only its owner reads) is 9 (Permission) in one line naming the call and the path, not an internal error.
import t from 'tap'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { EXTFS } from '../helpers/extfs'
import { run } from '../helpers/exec'
import { ExitCode } from '../../src/errors'

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'manifest-v1-every-kind.json')

t.test('stdout closed by its reader: exit 141, stderr empty', async (t) => {
  // 65,536 shard lines (2.6 MB): far more than the socket between us holds, so writes go on after the reader left.
  const child = spawn(EXTFS, ['inspect', FIXTURE, '--shards', '65536'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  child.stdout.once('data', () => child.stdout.destroy())
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)))
  t.equal(code, ExitCode.ReaderGone, 'exit 141')
  t.equal(stderr, '', 'nothing on stderr')
})

t.test('a permission denied: exit 9, one line naming the call and the path', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'extfs-denied-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const tree = path.join(dir, 'tree')
  fs.mkdirSync(tree)
  const secret = path.join(tree, 'secret')
  fs.writeFileSync(secret, 'only its owner reads this\n', { mode: 0o600 })
  fs.chownSync(secret, 1234, 1234)
  // Root without the capabilities that pass over file permissions, as in a unit that drops them.
  const cmd = `${EXTFS} export ${tree} --output ${path.join(dir, 'm.json')} --frozen-image none --assume-stable`
  const r = await run('capsh', ['--drop=cap_dac_read_search,cap_dac_override', '--', '-c', cmd])
  t.equal(r.code, ExitCode.Permission, `exit 9: ${r.stderr}`)
  t.equal(r.stderr.split('\n').filter(Boolean).length, 1, 'one line')
  t.match(r.stderr, new RegExp(`^extfs: open ${secret}: EACCES, permission denied: extfs needs root with its capabilities`), 'naming the call and the path')
})
