// Manifest signing: canonical JSON, HMAC sign/verify, key files.
import t, { type Test } from 'tap'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { ExtfsError, ManifestError, ExitCode } from '../../src/errors'
import { canonicalJson, readKeyFile, signManifest, verifyManifestSignature } from '../../src/manifest/sign'
import type { Manifest } from '../../src/manifest/types'
import { parseManifest, validateManifest } from '../../src/manifest/validate'
import { inodeOf as typedInodeOf, makeInode, makeManifest } from '../helpers/manifest-factory'

const KEY = Buffer.from('0123456789abcdef0123456789abcdef')
/** The key the golden fixture test/fixtures/manifest-v1-every-kind.json is signed with. */
const FIXTURE_KEY = Buffer.from('extfs-test-key-do-not-use-0123456789')
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loose = any
/** The inode numbered `ino`, untyped for mutation. */
const inodeOf = (m: Loose, ino: number): Loose => typedInodeOf(m, ino)

function refused(t: Test, fn: () => unknown, message: RegExp, type: new (...a: never[]) => Error = ManifestError): void {
  try {
    fn()
    t.fail(`accepted, expected ${message}`)
  } catch (err) {
    t.type(err, type)
    t.match((err as Error).message, message)
    t.notMatch((err as Error).message, /\n/, 'one line')
  }
}

/** The same value with every object's keys in reverse order. */
function reverseKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(reverseKeys)
  if (typeof v === 'object' && v !== null) {
    return Object.fromEntries(Object.entries(v).reverse().map(([k, x]) => [k, reverseKeys(x)]))
  }
  return v
}

t.test('canonicalJson', async (t) => {
  t.equal(canonicalJson({ b: [1, { d: 'x', c: null }], a: true }), '{"a":true,"b":[1,{"c":null,"d":"x"}]}', 'the doc example')
  t.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}', 'undefined fields left out, like JSON.stringify')
  t.equal(canonicalJson([3, 1, 2]), '[3,1,2]', 'arrays keep their order')
  t.equal(canonicalJson({ 'é': 1, z: 2, Z: 3, 'a b': 4 }), '{"Z":3,"a b":4,"z":2,"é":1}', 'UTF-16 code unit order')
  t.equal(canonicalJson('a"\n\u0000'), '"a\\"\\n\\u0000"', 'strings escaped as JSON.stringify does')
  t.equal(canonicalJson({}), '{}')
  t.equal(canonicalJson(-0), '0')
  t.throws(() => canonicalJson(NaN), TypeError)
  t.throws(() => canonicalJson({ a: Infinity }), TypeError)
  t.throws(() => canonicalJson([undefined]), TypeError)
  t.throws(() => canonicalJson(10n), TypeError)
  const m = makeManifest()
  t.equal(canonicalJson(reverseKeys(m)), canonicalJson(m), 'key order does not matter')
  t.equal(canonicalJson(m), canonicalJson(JSON.parse(JSON.stringify(m, null, 3))), 'formatting does not matter')
})

t.test('sign and verify', async (t) => {
  const m = makeManifest()
  const signed = signManifest(m, KEY)
  t.equal(m.signature, undefined, 'the input is not changed')
  t.equal(signed.signature?.alg, 'hmac-sha256')
  t.match(signed.signature?.value, /^[0-9a-f]{64}$/)
  t.doesNotThrow(() => validateManifest(signed), 'a signed manifest is valid')
  t.doesNotThrow(() => verifyManifestSignature(signed, KEY))

  t.test('covers the canonical JSON of everything but the signature', async (t) => {
    const expected = crypto.createHmac('sha256', KEY).update(canonicalJson(m)).digest('hex')
    t.equal(signed.signature?.value, expected)
  })

  t.test('survives reformatting and reordering', async (t) => {
    const reread = parseManifest(JSON.stringify(reverseKeys(signed), null, 2))
    t.doesNotThrow(() => verifyManifestSignature(reread, KEY))
  })

  t.test('re-signing replaces the signature', async (t) => {
    const twice = signManifest(signed, KEY)
    t.same(twice.signature, signed.signature)
    const other = signManifest(signed, Buffer.from('another key of 16+ bytes'))
    t.not(other.signature?.value, signed.signature?.value)
  })

  t.test('a manifest large enough to be hashed in many chunks', async (t) => {
    const big = makeManifest()
    for (let ino = 10; ino < 5000; ino++) {
      big.inodes.push(makeInode(ino, 'fifo'))
      inodeOf(big, 1).entries!.push({ name: `f${ino}`, ino })
    }
    const s = signManifest(big, KEY)
    t.equal(s.signature?.value, crypto.createHmac('sha256', KEY).update(canonicalJson(big)).digest('hex'))
    t.doesNotThrow(() => verifyManifestSignature(s, KEY))
  })
})

t.test('verification refuses', async (t) => {
  const signed = (): Loose => JSON.parse(JSON.stringify(signManifest(makeManifest(), KEY)))
  const altered = /^manifest signature does not match: altered, or signed with another key$/
  const alterations: Array<[string, (m: Loose) => void]> = [
    ['a changed permission', (m) => { inodeOf(m, 2).perm = 0o4755 }],
    ['a moved extent', (m) => { inodeOf(m, 2).extents[0].deviceOffset += 4096 }],
    ['a renamed entry', (m) => { inodeOf(m, 1).entries[0].name = 'b' }],
    ['a removed field', (m) => { delete m.devices[0].hint }],
    ['an added field', (m) => { m.devices[0].identity.serial = 'X' }],
    ['another config ID', (m) => { m.configId = 'cfg-0002-abcdef' }],
    ['reordered extents', (m) => { inodeOf(m, 2).extents.reverse() }],
    ['a changed signature', (m) => { m.signature.value = m.signature.value.replace(/^./, (c: string) => (c === '0' ? '1' : '0')) }],
    ['a signature that is not hex', (m) => { m.signature.value = 'zz' }],
  ]
  for (const [name, alter] of alterations) {
    t.test(name, async (t) => {
      const m = signed()
      alter(m)
      refused(t, () => verifyManifestSignature(m, KEY), altered)
    })
  }
  t.test('the wrong key', async (t) => {
    refused(t, () => verifyManifestSignature(signed(), Buffer.from('0123456789abcdef0123456789abcdeX')), altered)
  })
  t.test('an unsigned manifest', async (t) => {
    refused(t, () => verifyManifestSignature(makeManifest(), KEY), /^manifest is not signed but --key was given$/)
  })
  t.test('another algorithm', async (t) => {
    const m = signed()
    m.signature.alg = 'hmac-md5'
    refused(t, () => verifyManifestSignature(m, KEY), /^manifest signature algorithm "hmac-md5" is not supported/)
  })
  t.test('the exit code is BadManifest', async (t) => {
    try {
      verifyManifestSignature(makeManifest(), KEY)
    } catch (err) {
      t.equal((err as ManifestError).exitCode, ExitCode.BadManifest)
    }
  })
})

t.test('the golden signed fixture still verifies (canonical JSON is stable)', async (t) => {
  const text = fs.readFileSync(path.join(__dirname, '..', 'fixtures', 'manifest-v1-every-kind.json'), 'utf8')
  const m: Manifest = parseManifest(text)
  t.doesNotThrow(() => verifyManifestSignature(m, FIXTURE_KEY))
  refused(t, () => verifyManifestSignature(m, KEY), /does not match/)
})

t.test('readKeyFile', async (t) => {
  const dir = t.testdir({
    // binary keys are trimmed too: end on a byte that is not whitespace so this one keeps all 32
    'key-random': Buffer.concat([crypto.randomBytes(31), Buffer.from('!')]),
    'key-newline': '0123456789abcdef\n',
    'key-crlf-spaces': '0123456789abcdef \t\r\n',
    'key-leading-space': ' 0123456789abcde',
    'key-short': '0123456789abcde\n\n',
    'key-blank': '   \n',
    'key-huge': Buffer.alloc(65 * 1024, 0x61),
    'a-directory': {},
  })
  const key = (name: string): string => path.join(dir, name)

  t.equal(readKeyFile(key('key-random')).length, 32, 'binary keys are kept whole')
  t.equal(readKeyFile(key('key-newline')).toString(), '0123456789abcdef', 'trailing newline trimmed')
  t.equal(readKeyFile(key('key-crlf-spaces')).toString(), '0123456789abcdef', 'trailing whitespace trimmed')
  t.equal(readKeyFile(key('key-leading-space')).toString(), ' 0123456789abcde', 'leading whitespace is part of the key')

  const usage = (name: string, message: RegExp): void => {
    t.test(name, async (t) => {
      refused(t, () => readKeyFile(key(name)), message, ExtfsError)
      try {
        readKeyFile(key(name))
      } catch (err) {
        t.equal((err as ExtfsError).exitCode, ExitCode.Usage)
      }
    })
  }
  usage('key-short', /^key file .*key-short is too short \(need 16 bytes or more\)$/)
  usage('key-blank', /^key file .*key-blank is too short/)
  usage('key-missing', /^key file .*key-missing does not exist$/)
  usage('a-directory', /^cannot read key file .*a-directory: EISDIR$/)
  usage('key-huge', /^key file .*key-huge is over 65536 bytes/)
})
