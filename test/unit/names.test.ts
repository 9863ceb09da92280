// Names as bytes (src/manifest/names.ts): every byte string round-trips, valid UTF-8 stays plain text,
// and the validator takes only the one canonical form, under feature byte-names.
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { decodeName, encodeName, hasByteEscapes, nameBytes, nameEncodingProblem, printable } from '../../src/manifest/names'
import { parseManifest } from '../../src/manifest/validate'
import { inodeOf, makeManifest } from '../helpers/manifest-factory'

t.test('every byte string survives decode, JSON and encode', async (t) => {
  const samples = [
    Buffer.from('plain'), Buffer.from('é漢字😀'), Buffer.of(0xe9), Buffer.from('caf\xe9', 'latin1'),
    Buffer.of(0x82, 0xa0, 0x82, 0xa2), // Shift-JIS "あい"
    Buffer.of(0xed, 0xa0, 0x80), // an encoded surrogate: not UTF-8
    Buffer.of(0xc0, 0xaf), // overlong "/": not UTF-8
    Buffer.of(0xf4, 0x90, 0x80, 0x80), // above U+10FFFF
    Buffer.of(0xef, 0xbf, 0xbd), // U+FFFD itself, valid
    Buffer.of(0xe2, 0x82), // truncated sequence
  ]
  for (let i = 0; i < 2000; i++) samples.push(randomBytes(1 + (i % 40)))
  for (const bytes of samples) {
    const name = decodeName(bytes)
    const back = encodeName(JSON.parse(JSON.stringify(name)) as string)
    if (!back.equals(bytes)) t.fail(`${bytes.toString('hex')} came back as ${back.toString('hex')}`)
    if (nameBytes(name) !== bytes.length) t.fail(`${bytes.toString('hex')}: nameBytes ${nameBytes(name)}`)
    if (nameEncodingProblem(name) !== undefined) t.fail(`${bytes.toString('hex')}: decodeName's own output refused`)
  }
  t.equal(decodeName(Buffer.from('é漢字😀')), 'é漢字😀', 'valid UTF-8 is plain text')
  t.notOk(hasByteEscapes('é漢字😀'))
  t.equal(decodeName(Buffer.of(0x63, 0xe9)), 'c\udce9', 'a Latin-1 byte is one escape')
  t.ok(hasByteEscapes('c\udce9'))
})

t.test('strings that are no name are refused', async (t) => {
  t.match(nameEncodingProblem('a\ud800'), /no byte/, 'a lone high surrogate stands for no byte')
  t.match(nameEncodingProblem('\udcc3\udca9'), /valid UTF-8/, 'escapes of "é" are not the one way to write it')
  t.throws(() => encodeName('x\udc10'), RangeError, 'U+DC10 would be an ASCII byte: never an escape')
})

t.test('printable shows bytes and control characters as \\xNN', async (t) => {
  t.equal(printable('caf\udce9'), 'caf\\xe9')
  t.equal(printable('two\nlines\x7f'), 'two\\x0alines\\x7f')
  t.equal(printable('漢字'), '漢字')
})

t.test('the validator takes byte names only with feature byte-names', async (t) => {
  const withName = (name: string, features: string[]) => {
    const m = makeManifest()
    m.features = features
    inodeOf(m, 1).entries![0]!.name = name
    return JSON.stringify(m)
  }
  t.doesNotThrow(() => parseManifest(withName('caf\udce9', ['byte-names'])))
  t.throws(() => parseManifest(withName('caf\udce9', [])), /entry "caf\\xe9" holds bytes that are not UTF-8 but the manifest does not declare feature "byte-names"/)
  t.throws(() => parseManifest(withName('\udcc3\udca9', ['byte-names'])), /valid UTF-8/)
  t.throws(() => parseManifest(withName('a\ud800', ['byte-names'])), /no byte/)
  t.throws(() => parseManifest(withName('\udcff'.repeat(256), ['byte-names'])), /256 bytes, over the limit of 255/, 'an escape is one byte')
  t.doesNotThrow(() => parseManifest(withName('\udcff'.repeat(255), ['byte-names'])))

  const withTargetAndXattr = (target: string, xattr: string, features: string[]) => {
    const m = makeManifest()
    m.features = features
    inodeOf(m, 4).target = target
    inodeOf(m, 2).xattrs = { [xattr]: 'AA==' }
    return JSON.stringify(m)
  }
  t.doesNotThrow(() => parseManifest(withTargetAndXattr('\udc82\udca0', 'user.\udcff', ['byte-names'])))
  t.throws(() => parseManifest(withTargetAndXattr('\udc82\udca0', 'user.a', [])), /symlink target "\\x82\\xa0" holds bytes/)
  t.throws(() => parseManifest(withTargetAndXattr('a', 'user.\udcff', [])), /xattr name "user.\\xff" holds bytes/)
})
