// Manifest files: bounded reading, atomic writing.
import t from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { readManifestFile, writeFileAtomic, writeManifestFile } from '../../src/manifest/io'
import { signManifest, verifyManifestSignature } from '../../src/manifest/sign'
import { inodeOf, makeManifest, refused } from '../helpers/manifest-factory'

const FIXTURES = path.join(__dirname, '..', 'fixtures')


/** Counts fs.readSync calls while `fn` runs (io.ts calls it through the shared module object). */
function countReads(fn: () => void): number {
  const real = fs.readSync
  let calls = 0
  fs.readSync = ((...args: Parameters<typeof fs.readSync>) => {
    calls++
    return (real as (...a: unknown[]) => number)(...args)
  }) as typeof fs.readSync
  try {
    fn()
  } finally {
    fs.readSync = real
  }
  return calls
}

t.test('readManifestFile', async (t) => {
  const dir = t.testdir({
    'ok.json': JSON.stringify(makeManifest()),
    'truncated.json': JSON.stringify(makeManifest()).slice(0, 300),
    'latin1.json': Buffer.concat([Buffer.from('{"format":"extfs-manifest","x":"'), Buffer.from([0xe9]), Buffer.from('"}')]),
    'a-directory': {},
  })
  const file = (name: string): string => path.join(dir, name)

  t.test('reads the fixtures and a written manifest', async (t) => {
    t.equal(readManifestFile(path.join(FIXTURES, 'manifest-v1-minimal.json')).configId, 'minimal-0001')
    t.equal(readManifestFile(path.join(FIXTURES, 'manifest-v1-every-kind.json')).configId, 'every-kind-0001')
    t.same(readManifestFile(file('ok.json')), makeManifest())
  })

  t.test('a missing file', async (t) => {
    refused(t, () => readManifestFile(file('nope.json')), /^manifest .*nope\.json does not exist$/)
  })

  t.test('a directory', async (t) => {
    refused(t, () => readManifestFile(file('a-directory')), /^manifest .*a-directory is a directory$/)
  })

  t.test('oversized is refused before reading', async (t) => {
    const size = fs.statSync(file('ok.json')).size
    let reads = -1
    reads = countReads(() => refused(t, () => readManifestFile(file('ok.json'), { maxBytes: 100 }),
      new RegExp(`^manifest .*ok\\.json is ${size} bytes, over the limit of 100$`)))
    t.equal(reads, 0, 'not a byte read')
    t.ok(countReads(() => readManifestFile(file('ok.json'), { maxBytes: size })) > 0, 'exactly the limit is fine (and read)')
  })

  t.test('a 2 GiB sparse file is refused at once under the default limit', async (t) => {
    const big = file('big.json')
    fs.writeFileSync(big, '')
    fs.truncateSync(big, 2 * 1024 ** 3)
    const reads = countReads(() => refused(t, () => readManifestFile(big), /is 2147483648 bytes, over the limit of 1073741824$/))
    t.equal(reads, 0)
  })

  t.test('truncated JSON', async (t) => {
    refused(t, () => readManifestFile(file('truncated.json')), /^manifest is not valid JSON \(truncated\?\)/)
  })

  t.test('not UTF-8', async (t) => {
    refused(t, () => readManifestFile(file('latin1.json')), /^manifest .*latin1\.json is not valid UTF-8$/)
  })

  t.test('invalid content', async (t) => {
    const m = makeManifest()
    inodeOf(m, 1).entries![0]!.name = '..'
    fs.writeFileSync(file('bad.json'), JSON.stringify(m))
    refused(t, () => readManifestFile(file('bad.json')), /^inode 1: entry "\.\." is reserved$/)
  })
})

t.test('writeFileAtomic', async (t) => {
  const dir = t.testdir({ 'existing': 'old content' })

  writeFileAtomic(path.join(dir, 'new'), 'hello\n')
  t.equal(fs.readFileSync(path.join(dir, 'new'), 'utf8'), 'hello\n')

  writeFileAtomic(path.join(dir, 'existing'), Buffer.from([0, 1, 2, 255]))
  t.same([...fs.readFileSync(path.join(dir, 'existing'))], [0, 1, 2, 255], 'replaces, Buffers written as is')

  t.same(fs.readdirSync(dir).sort(), ['existing', 'new'], 'no temporary files left')

  t.test('a failed write leaves the old file and no temporary file', async (t) => {
    const sub = t.testdir({ 'target': 'old' })
    if (process.getuid?.() === 0) {
      // root ignores directory permissions: fail the rename instead, with a directory in the way.
      fs.mkdirSync(path.join(sub, 'in-the-way'))
      fs.writeFileSync(path.join(sub, 'in-the-way', 'x'), '')
      t.throws(() => writeFileAtomic(path.join(sub, 'in-the-way'), 'new'))
      t.same(fs.readdirSync(sub).sort(), ['in-the-way', 'target'])
    } else {
      fs.chmodSync(sub, 0o555)
      try {
        t.throws(() => writeFileAtomic(path.join(sub, 'target'), 'new'))
      } finally {
        fs.chmodSync(sub, 0o755)
      }
      t.same(fs.readdirSync(sub), ['target'])
    }
    t.equal(fs.readFileSync(path.join(sub, 'target'), 'utf8'), 'old')
  })

  t.test('a missing directory', async (t) => {
    t.throws(() => writeFileAtomic(path.join(dir, 'no-such-dir', 'f'), 'x'), { code: 'ENOENT' })
  })
})

t.test('writeManifestFile', async (t) => {
  const dir = t.testdir({})
  const out = path.join(dir, 'manifest.json')
  const signed = signManifest(makeManifest(), Buffer.from('0123456789abcdef'))

  writeManifestFile(out, signed)
  const back = readManifestFile(out)
  t.same(back, signed, 'round trip')
  t.doesNotThrow(() => verifyManifestSignature(back, Buffer.from('0123456789abcdef')), 'signature survives the layout')

  const lines = fs.readFileSync(out, 'utf8').split('\n')
  const inodeLines = lines.filter((l) => l.startsWith('{"ino":'))
  t.equal(inodeLines.length, signed.inodes.length, 'one inode per line')
  t.ok(lines.some((l) => l.startsWith('{"id":"d0"')), 'one device per line')
  t.same(fs.readdirSync(dir), ['manifest.json'], 'no temporary files left')

  t.test('refuses to write an invalid manifest', async (t) => {
    const m = makeManifest()
    inodeOf(m, 2).extents!.reverse()
    refused(t, () => writeManifestFile(path.join(dir, 'bad.json'), m), /extents unsorted/)
    t.notOk(fs.existsSync(path.join(dir, 'bad.json')))
  })

  t.test('leaves out undefined fields', async (t) => {
    const m = { ...makeManifest(), signature: undefined }
    writeManifestFile(out, m)
    t.notMatch(fs.readFileSync(out, 'utf8'), /signature/)
    t.same(readManifestFile(out), makeManifest())
  })
})
