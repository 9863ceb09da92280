// The real CLI writing to a reader that stops reading (`extfs inspect … | head`): it ends at once with
// 141 (ReaderGone, as a C tool killed by SIGPIPE) and says nothing on stderr, no stack trace.
import t from 'tap'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { EXTFS } from '../helpers/extfs'
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
