// What a view counts of its refusals and failed reads (src/view/refusals.ts): `extfs backup` names the
// files whose reads failed from it, and tells them apart from refusals.
import t from 'tap'
import { FAILED_FILES_NAMED, Refusals } from '../../src/view/refusals'

t.test('failed reads: counted per request and per file, the first files named', async (t) => {
  const r = new Refusals()
  t.same(r.summary(), { count: 0, first: undefined, failedReads: { requests: 0, files: 0, paths: [] } }, 'nothing yet')
  r.note('read', 7, 'pread of 4096 bytes at 0: Input/output error', '/a')
  r.note('read', 7, 'pread of 4096 bytes at 4096: Input/output error', '/a')
  r.note('read', 9, 'short read: 0 of 4096 bytes at 0', '/dir/b')
  t.same(r.summary(), {
    count: 3,
    first: 'read failed: /a: pread of 4096 bytes at 0: Input/output error',
    failedReads: { requests: 3, files: 2, paths: ['/a', '/dir/b'] },
  }, 'two files, three requests; the first failure named with its file')
  r.note('read-refused', 9, 'frozen image x was released', '/dir/b')
  t.match(r.summary(), { count: 4, first: 'read refused: frozen image x was released', failedReads: { requests: 3, files: 2 } },
    'a refusal is the first reason over failed reads: they are named on their own')
})

t.test('failed reads of many files: all counted, the first named', async (t) => {
  const r = new Refusals()
  for (let i = 0; i < FAILED_FILES_NAMED + 50; i++) r.note('read', i, 'EIO', `/f${i}`)
  const { failedReads } = r.summary()
  t.equal(failedReads.files, FAILED_FILES_NAMED + 50)
  t.equal(failedReads.paths.length, FAILED_FILES_NAMED)
  t.equal(failedReads.paths[0], '/f0')
})
