// The manifest validator, table-driven: a valid base manifest, then one mutation per bad input with
// the message it must produce. Plus the golden fixtures of every format version.
import t, { type Test } from 'tap'
import fs from 'node:fs'
import path from 'node:path'
import { parseManifest, validateManifest } from '../../src/manifest/validate'
import { extent, inodeOf as typedInodeOf, makeInode, makeManifest, refused } from '../helpers/manifest-factory'

const FIXTURES = path.join(__dirname, '..', 'fixtures')
// Mutations reach into places the types forbid (that is the point), so they see the manifest untyped.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Loose = any
/** The inode numbered `ino`, untyped for mutation. */
const inodeOf = (m: Loose, ino: number): Loose => typedInodeOf(m, ino)


t.test('the base manifest is valid', async (t) => {
  const m = makeManifest()
  t.equal(validateManifest(m), m, 'returns the same object')
  t.equal(parseManifest(JSON.stringify(m)).configId, m.configId)
})

t.test('text that is not JSON', async (t) => {
  const text = JSON.stringify(makeManifest())
  const cases: Array<[string, string]> = [
    ['malformed', '{"format": "extfs-manifest",, }'],
    ['truncated', text.slice(0, Math.floor(text.length / 2))],
    ['empty', ''],
  ]
  for (const [name, input] of cases) {
    t.test(name, async (t) => refused(t, () => parseManifest(input), /^manifest is not valid JSON \(truncated\?\): /))
  }
  t.test('not an object', async (t) => refused(t, () => parseManifest('[1,2]'), /^manifest: must be a JSON object/))
  // Found by fuzzing (docs/fuzzing.md): JSON.parse's message quotes the text around the error, raw.
  t.test('the quoted text around a syntax error stays one line, control characters escaped', async (t) => {
    refused(t, () => parseManifest('{\n"format":\n\u001b[2J\n}'), /^manifest is not valid JSON \(truncated\?\): [^\n\r\u001b]*\\u000a[^\n\r\u001b]*\\u001b[^\n\r\u001b]*$/)
  })
  t.test('deeply nested junk', async (t) => {
    const deep = '['.repeat(200_000) + ']'.repeat(200_000)
    refused(t, () => parseManifest(`{"format":"extfs-manifest","version":1,"features":[${deep}]}`), /^manifest: features must be strings, got/)
  })
})

interface Case {
  name: string
  mutate: (m: Loose) => void
  error: RegExp
}

const HEX64 = 'a'.repeat(64)
const bytes = (n: number): string => Buffer.alloc(n, 0x61).toString('base64')

const cases: Case[] = [
  // header
  { name: 'wrong format', mutate: (m) => { m.format = 'tarball' }, error: /format is "tarball", expected "extfs-manifest"/ },
  { name: 'unknown version', mutate: (m) => { m.version = 3 }, error: /^unknown manifest version 3: this extfs reads versions 1 and 2; upgrade extfs$/ },
  { name: 'version 2 as JSON', mutate: (m) => { m.version = 2 }, error: /^manifest version 2 is binary \(docs\/manifest-v2.md\), not JSON$/ },
  { name: 'version 0', mutate: (m) => { m.version = 0 }, error: /^unknown manifest version 0: this extfs reads versions 1 and 2$/ },
  { name: 'version as string', mutate: (m) => { m.version = '1' }, error: /version must be a non-negative integer, got "1"/ },
  { name: 'unknown feature', mutate: (m) => { m.features = ['compression'] }, error: /feature "compression" that this extfs does not know.*upgrade extfs/ },
  { name: 'feature twice', mutate: (m) => { m.features = ['inline-data', 'inline-data'] }, error: /feature "inline-data" is listed twice/ },
  { name: 'features missing', mutate: (m) => { delete m.features }, error: /features must be an array/ },
  { name: 'unknown top-level field', mutate: (m) => { m.compression = 'zstd' }, error: /^manifest: unknown field "compression"/ },
  { name: 'configId too short', mutate: (m) => { m.configId = 'abc' }, error: /configId "abc" is invalid/ },
  { name: 'configId with slash', mutate: (m) => { m.configId = '../../etc/passwd' }, error: /configId .* is invalid/ },
  { name: 'configRecord relative with a directory', mutate: (m) => { m.configRecord = 'shared/x.json' }, error: /configRecord "shared\/x.json" must be an absolute path or a file name beside the manifest/ },
  { name: 'configRecord ..', mutate: (m) => { m.configRecord = '..' }, error: /configRecord "\.\." must be an absolute path or a file name/ },
  { name: 'configRecord with NUL', mutate: (m) => { m.configRecord = '/shared/x\0y' }, error: /configRecord .* contains NUL/ },
  { name: 'createdAt not a string', mutate: (m) => { m.createdAt = 1714564800 }, error: /createdAt must be a string/ },
  { name: 'createdAt not a date', mutate: (m) => { m.createdAt = 'yesterday' }, error: /createdAt "yesterday" is not a date/ },
  { name: 'source missing', mutate: (m) => { delete m.source }, error: /source must be an object/ },
  { name: 'source paths not an array', mutate: (m) => { m.source.paths = '/srv' }, error: /^source: paths must be an array/ },
  { name: 'source path empty', mutate: (m) => { m.source.paths = [''] }, error: /^source: paths\[0\] must be a non-empty string/ },
  { name: 'frozen image kind unknown', mutate: (m) => { m.frozenImage.kind = 'lvm' }, error: /^frozenImage: kind must be "freeze", "none" or "snapshot", got "lvm"/ },
  { name: 'snapshot without mechanism', mutate: (m) => { m.frozenImage.kind = 'snapshot'; m.frozenImage.imageId = 'a'.repeat(32); m.frozenImage.imagePath = '/x' }, error: /^frozenImage: mechanism must be "btrfs-snapshot" or "clone-set", got nothing/ },
  { name: 'snapshot image id not hex', mutate: (m) => { Object.assign(m.frozenImage, { kind: 'snapshot', mechanism: 'clone-set', imageId: '../x', imagePath: '/x' }) }, error: /^frozenImage: imageId must be 32 lowercase hex digits/ },
  { name: 'mechanism on a freeze', mutate: (m) => { m.frozenImage.mechanism = 'clone-set' }, error: /^frozenImage: mechanism is only allowed with kind "snapshot"/ },
  { name: 'frozen image mountpoint relative', mutate: (m) => { m.frozenImage.mountpoint = 'srv' }, error: /^frozenImage: mountpoint "srv" is not an absolute path/ },
  { name: 'blockSize not a power of two', mutate: (m) => { m.blockSize = 1000 }, error: /blockSize must be a power of two from 512 to 65536, got 1000/ },
  { name: 'blockSize too small', mutate: (m) => { m.blockSize = 256 }, error: /blockSize must be a power of two/ },
  { name: 'blockSize too large', mutate: (m) => { m.blockSize = 131072 }, error: /blockSize must be a power of two/ },
  { name: 'signature of another alg', mutate: (m) => { m.signature = { alg: 'md5', value: HEX64 } }, error: /^signature: alg must be "hmac-sha256"/ },
  { name: 'signature value not hex', mutate: (m) => { m.signature = { alg: 'hmac-sha256', value: 'A'.repeat(64) } }, error: /^signature: value must be 64 lowercase hex/ },

  // devices
  { name: 'device id with a space', mutate: (m) => { m.devices[0].id = 'd 0' }, error: /^devices\[0\]: id "d 0" is invalid/ },
  { name: 'device id twice', mutate: (m) => { m.devices.push({ ...m.devices[0], fingerprints: [] }) }, error: /^devices\[1\]: id "d0" is used by another device too/ },
  { name: 'device size 0', mutate: (m) => { m.devices[0].size = 0 }, error: /^devices\[0\]: size must be a positive integer/ },
  { name: 'device size unsafe', mutate: (m) => { m.devices[0].size = 2 ** 53 }, error: /^devices\[0\]: size must be a positive integer/ },
  { name: 'identity field too long', mutate: (m) => { m.devices[0].identity.serial = 'x'.repeat(300) }, error: /^devices\[0\].identity: serial must be a string of 1 to 256/ },
  { name: 'identity field unknown', mutate: (m) => { m.devices[0].identity.label = 'x' }, error: /^devices\[0\].identity: unknown field "label"/ },
  { name: 'device hint with NUL', mutate: (m) => { m.devices[0].hint = '/dev/\0' }, error: /^devices\[0\]: hint .* contains NUL/ },
  { name: 'fingerprint length 0', mutate: (m) => { m.devices[0].fingerprints[0].length = 0 }, error: /^devices\[0\].fingerprints\[0\]: length must be an integer from 1 to 1048576/ },
  { name: 'fingerprint over 1 MiB', mutate: (m) => { m.devices[0].size = 4 << 20; m.devices[0].fingerprints[0].length = (1 << 20) + 1 }, error: /fingerprints\[0\]: length must be an integer from 1 to 1048576/ },
  { name: 'fingerprint past device end', mutate: (m) => { m.devices[0].fingerprints[0].offset = 1024 * 1024 - 4095 }, error: /fingerprints\[0\]: bytes 1044481..1048577 run past device end \(1048576 bytes\)/ },
  { name: 'fingerprint sha256 upper case', mutate: (m) => { m.devices[0].fingerprints[0].sha256 = 'A'.repeat(64) }, error: /fingerprints\[0\]: sha256 must be 64 lowercase hex digits/ },
  { name: 'fingerprint sha256 short', mutate: (m) => { m.devices[0].fingerprints[0].sha256 = 'abc' }, error: /fingerprints\[0\]: sha256 must be 64 lowercase hex digits/ },

  // inode fields
  { name: 'ino 0', mutate: (m) => { inodeOf(m, 4).ino = 0 }, error: /^inodes\[3\]: ino must be a positive integer, got 0/ },
  { name: 'ino twice', mutate: (m) => { m.inodes.push(makeInode(4, 'fifo')) }, error: /^inode 4: is listed twice/ },
  { name: 'sparse ino twice', mutate: (m) => { inodeOf(m, 4).ino = 2 ** 50; m.inodes.push(makeInode(2 ** 50, 'fifo')) }, error: /^inode 1125899906842624: is listed twice/ },
  { name: 'ino unsafe', mutate: (m) => { inodeOf(m, 4).ino = 2 ** 53 }, error: /^inodes\[3\]: ino must be a positive integer/ },
  { name: 'unknown kind', mutate: (m) => { inodeOf(m, 4).kind = 'door' }, error: /^inode 4: kind must be one of .*got "door"/ },
  { name: 'unknown inode field', mutate: (m) => { inodeOf(m, 2).compressed = true }, error: /^inode 2: unknown field "compressed"/ },
  { name: 'attrs on a symlink', mutate: (m) => { inodeOf(m, 4).attrs = 0x10 }, error: /^inode 4: a symlink cannot have attrs/ },
  { name: 'attrs of 0 (absent instead)', mutate: (m) => { inodeOf(m, 2).attrs = 0 }, error: /^inode 2: attrs must be an integer from 1 to 4294967295/ },
  { name: 'perm past 07777', mutate: (m) => { inodeOf(m, 2).perm = 0o10000 }, error: /^inode 2: perm must be an integer from 0 to 0o7777, got 4096/ },
  { name: 'uid negative', mutate: (m) => { inodeOf(m, 2).uid = -1 }, error: /^inode 2: uid must be an integer from 0 to 4294967295/ },
  { name: 'gid past 2^32-1', mutate: (m) => { inodeOf(m, 2).gid = 2 ** 32 }, error: /^inode 2: gid must be an integer from 0 to 4294967295/ },
  { name: 'nlink 0', mutate: (m) => { inodeOf(m, 2).nlink = 0 }, error: /^inode 2: nlink must be an integer from 1/ },
  { name: 'size negative', mutate: (m) => { inodeOf(m, 2).size = -1 }, error: /^inode 2: size must be a non-negative integer/ },
  { name: 'size fractional', mutate: (m) => { inodeOf(m, 2).size = 1.5 }, error: /^inode 2: size must be a non-negative integer/ },
  { name: 'blocks missing', mutate: (m) => { delete inodeOf(m, 2).blocks }, error: /^inode 2: blocks must be a non-negative integer, got nothing/ },
  { name: 'time of one element', mutate: (m) => { inodeOf(m, 2).mtime = [1] }, error: /^inode 2: mtime must be \[seconds, nanoseconds\]/ },
  { name: 'time nsec 1e9', mutate: (m) => { inodeOf(m, 2).atime = [1, 1e9] }, error: /^inode 2: atime must be \[seconds, nanoseconds\]/ },
  { name: 'time nsec negative', mutate: (m) => { inodeOf(m, 2).ctime = [1, -1] }, error: /^inode 2: ctime must be/ },
  { name: 'time sec string', mutate: (m) => { inodeOf(m, 2).ctime = ['1', 0] }, error: /^inode 2: ctime must be/ },
  { name: 'rdev on a file', mutate: (m) => { inodeOf(m, 2).rdev = 0x0801 }, error: /^inode 2: a file cannot have rdev/ },
  { name: 'rdev negative', mutate: (m) => { m.inodes.push(makeInode(5, 'char', { rdev: -1 })); inodeOf(m, 1).entries!.push({ name: 'c', ino: 5 }) }, error: /^inode 5: rdev must be a non-negative integer/ },

  // xattrs
  { name: 'xattr name without namespace', mutate: (m) => { inodeOf(m, 2).xattrs = { foo: '' } }, error: /^inode 2: xattr name "foo" must start with user\., trusted\., security\., system\., btrfs\./ },
  { name: 'xattr name only a namespace', mutate: (m) => { inodeOf(m, 2).xattrs = { 'user.': '' } }, error: /xattr name "user\." has nothing after its namespace/ },
  { name: 'xattr name empty', mutate: (m) => { inodeOf(m, 2).xattrs = { '': '' } }, error: /xattr name "" is empty/ },
  { name: 'xattr name 256 bytes', mutate: (m) => { inodeOf(m, 2).xattrs = { ['user.' + 'x'.repeat(251)]: '' } }, error: /xattr name .* is 256 bytes, over the limit of 255/ },
  { name: 'xattr value not base64', mutate: (m) => { inodeOf(m, 2).xattrs = { 'user.a': 'abc' } }, error: /xattr "user\.a" value is not valid base64/ },
  { name: 'xattr value with junk', mutate: (m) => { inodeOf(m, 2).xattrs = { 'user.a': 'ab!=' } }, error: /xattr "user\.a" value is not valid base64/ },
  { name: 'xattr value non-canonical padding', mutate: (m) => { inodeOf(m, 2).xattrs = { 'user.a': 'QR==' } }, error: /xattr "user\.a" value is not valid base64/ },
  { name: 'xattr value not a string', mutate: (m) => { inodeOf(m, 2).xattrs = { 'user.a': 5 } }, error: /xattr "user\.a" value is not valid base64/ },
  { name: 'xattr value over 64 KiB', mutate: (m) => { inodeOf(m, 2).xattrs = { 'user.a': bytes(65537) } }, error: /xattr "user\.a" value is over the limit of 65536 bytes/ },
  { name: 'xattrs as an array', mutate: (m) => { inodeOf(m, 2).xattrs = [] }, error: /^inode 2: xattrs must be an object/ },
  { name: 'xattr names over listxattr\'s 64 KiB', mutate: (m) => { inodeOf(m, 2).xattrs = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`user.${'x'.repeat(240)}${i}`, ''])) }, error: /^inode 2: xattr names take over 65536 bytes/ },

  // fields by kind
  { name: 'extents on a dir', mutate: (m) => { inodeOf(m, 3).extents = [] }, error: /^inode 3: a dir cannot have extents/ },
  { name: 'inline on a symlink', mutate: (m) => { m.features = ['inline-data']; inodeOf(m, 4).inline = 'YQ==' }, error: /^inode 4: a symlink cannot have inline data/ },
  { name: 'entries on a file', mutate: (m) => { inodeOf(m, 2).entries = [] }, error: /^inode 2: a file cannot have entries/ },
  { name: 'target on a file', mutate: (m) => { inodeOf(m, 2).target = 'x' }, error: /^inode 2: a file cannot have a target/ },
  { name: 'dir without entries', mutate: (m) => { delete inodeOf(m, 3).entries }, error: /^inode 3: a dir needs an entries array/ },
  { name: 'symlink without target', mutate: (m) => { delete inodeOf(m, 4).target }, error: /^inode 4: a symlink needs a target/ },
  { name: 'symlink target empty', mutate: (m) => { inodeOf(m, 4).target = '' }, error: /^inode 4: symlink target must be a non-empty string/ },
  { name: 'symlink target with NUL', mutate: (m) => { inodeOf(m, 4).target = 'a\0b' }, error: /^inode 4: symlink target "a\\u0000b" contains NUL/ },
  { name: 'symlink target 4096 bytes', mutate: (m) => { inodeOf(m, 4).target = 'x'.repeat(4096) }, error: /^inode 4: symlink target is 4096 bytes, over the limit of 4095/ },

  // inline data
  { name: 'inline without the feature', mutate: (m) => { delete inodeOf(m, 2).extents; inodeOf(m, 2).inline = bytes(10000) }, error: /^inode 2: has inline data but the manifest does not declare feature "inline-data"/ },
  { name: 'inline bad base64', mutate: (m) => { m.features = ['inline-data']; delete inodeOf(m, 2).extents; inodeOf(m, 2).inline = 'not base64!' }, error: /^inode 2: inline data is not valid base64/ },
  { name: 'inline length differs from size', mutate: (m) => { m.features = ['inline-data']; delete inodeOf(m, 2).extents; inodeOf(m, 2).inline = bytes(9999) }, error: /^inode 2: inline data is 9999 bytes but size is 10000/ },
  { name: 'inline over 64 KiB', mutate: (m) => { m.features = ['inline-data']; delete inodeOf(m, 2).extents; inodeOf(m, 2).size = 65537; inodeOf(m, 2).inline = bytes(65537) }, error: /^inode 2: inline data is over the limit of 65536 bytes/ },
  { name: 'inline with extents', mutate: (m) => { m.features = ['inline-data']; inodeOf(m, 2).inline = bytes(10000) }, error: /^inode 2: has both inline data and extents/ },

  // extents
  { name: 'extent past device end', mutate: (m) => { inodeOf(m, 2).extents[1].deviceOffset = 1024 * 1024 - 100 }, error: /^inode 2: extents\[1\] past device end: bytes 1048476..1052572 of device 0, which is 1048576 bytes/ },
  { name: 'extent on a missing device', mutate: (m) => { inodeOf(m, 2).extents[0].device = 1 }, error: /^inode 2: extents\[0\].device 1 does not exist \(the manifest lists 1 devices\)/ },
  { name: 'extent device negative', mutate: (m) => { inodeOf(m, 2).extents[0].device = -1 }, error: /extents\[0\].device -1 does not exist/ },
  { name: 'extent of length 0', mutate: (m) => { inodeOf(m, 2).extents[0].length = 0 }, error: /^inode 2: extents\[0\].length must be a positive integer/ },
  { name: 'extent at EOF', mutate: (m) => { inodeOf(m, 2).extents.push(extent(10000, 0, 0, 10)) }, error: /^inode 2: extents\[2\] starts at 10000, at or past the file size 10000/ },
  { name: 'extent fileOffset negative', mutate: (m) => { inodeOf(m, 2).extents[0].fileOffset = -4096 }, error: /extents\[0\].fileOffset must be a non-negative integer/ },
  { name: 'extent deviceOffset fractional', mutate: (m) => { inodeOf(m, 2).extents[0].deviceOffset = 0.5 }, error: /extents\[0\].deviceOffset must be a non-negative integer/ },
  { name: 'extents unsorted', mutate: (m) => { inodeOf(m, 2).extents.reverse() }, error: /^inode 2: extents unsorted: extents\[1\] starts at 0, before extents\[0\] at 8192/ },
  { name: 'extents overlapping', mutate: (m) => { inodeOf(m, 2).extents[0].length = 8193 }, error: /^inode 2: extents overlapping: extents\[0\] ends at 8193, extents\[1\] starts at 8192/ },
  { name: 'extents at the same offset', mutate: (m) => { inodeOf(m, 2).extents[1].fileOffset = 0 }, error: /^inode 2: extents overlapping/ },
  { name: 'extent unknown field', mutate: (m) => { inodeOf(m, 2).extents[0].flags = 1 }, error: /^inode 2: extents\[0\] has unknown field "flags"/ },
  { name: 'extents not an array', mutate: (m) => { inodeOf(m, 2).extents = {} }, error: /^inode 2: extents must be an array/ },

  // the tree
  { name: 'missing root', mutate: (m) => { m.root = 99 }, error: /^manifest: root inode 99 is missing from the inode list/ },
  { name: 'root not a number', mutate: (m) => { m.root = '1' }, error: /^manifest: root must be a positive integer/ },
  { name: 'root is a file', mutate: (m) => { m.root = 2 }, error: /^manifest: root inode 2 is a file, not a dir/ },
  { name: 'entry name empty', mutate: (m) => { inodeOf(m, 1).entries[0].name = '' }, error: /^inode 1: entry "" is empty/ },
  { name: 'entry name .', mutate: (m) => { inodeOf(m, 1).entries[0].name = '.' }, error: /^inode 1: entry "\." is reserved/ },
  { name: 'entry name ..', mutate: (m) => { inodeOf(m, 1).entries[0].name = '..' }, error: /^inode 1: entry "\.\." is reserved/ },
  { name: 'entry name with /', mutate: (m) => { inodeOf(m, 1).entries[0].name = 'a/b' }, error: /^inode 1: entry "a\/b" contains "\/"$/ },
  { name: 'entry name with NUL', mutate: (m) => { inodeOf(m, 1).entries[0].name = 'a\0b' }, error: /^inode 1: entry "a\\u0000b" contains NUL$/ },
  { name: 'entry name twice in a dir', mutate: (m) => { inodeOf(m, 1).entries[2].name = 'a' }, error: /^inode 1: entry "a" appears twice$/ },
  { name: 'entry name 256 bytes', mutate: (m) => { inodeOf(m, 1).entries[0].name = 'x'.repeat(256) }, error: /^inode 1: entry "x+"\.\.\. is 256 bytes, over the limit of 255$/ },
  { name: 'entry name 86 three-byte characters', mutate: (m) => { inodeOf(m, 1).entries[0].name = '€'.repeat(86) }, error: /is 258 bytes, over the limit of 255/ },
  { name: 'entry name with a lone surrogate', mutate: (m) => { inodeOf(m, 1).entries[0].name = 'a\ud800' }, error: /^inode 1: entry "a\\ud800" is not valid Unicode/ },
  { name: 'entry name not a string', mutate: (m) => { inodeOf(m, 1).entries[0].name = 7 }, error: /^inode 1: entries\[0\].name must be a string/ },
  { name: 'entry unknown field', mutate: (m) => { inodeOf(m, 1).entries[0].type = 'file' }, error: /^inode 1: entries\[0\] has unknown field "type"/ },
  { name: 'entry to a missing inode', mutate: (m) => { inodeOf(m, 1).entries[0].ino = 42 }, error: /^inode 1: entry "a" points at inode 42, which does not exist/ },
  { name: 'entry to a missing inode, far past the others', mutate: (m) => { inodeOf(m, 1).entries[0].ino = 2 ** 40 }, error: /^inode 1: entry "a" points at inode 1099511627776, which does not exist/ },
  { name: 'entry to a missing inode among sparse numbers', mutate: (m) => { inodeOf(m, 4).ino = 2 ** 40; inodeOf(m, 1).entries[2].ino = 2 ** 40 + 1 }, error: /points at inode 1099511627777, which does not exist/ },
  { name: 'entry ino not a number', mutate: (m) => { inodeOf(m, 1).entries[0].ino = '2' }, error: /^inode 1: entry "a" has ino "2", not a positive integer/ },
  { name: 'entry back to the root', mutate: (m) => { inodeOf(m, 3).entries.push({ name: 'up', ino: 1 }) }, error: /^inode 3: entry "up" points back at the root directory \(a cycle\)/ },
  { name: 'dir containing itself', mutate: (m) => { inodeOf(m, 3).entries.push({ name: 'me', ino: 3 }) }, error: /^inode 3: entry "me" points at directory 3, its own ancestor \(a cycle\)/ },
  {
    name: 'dir cycle two deep',
    mutate: (m) => {
      m.inodes.push(makeInode(5, 'dir', { entries: [{ name: 'loop', ino: 3 }] }))
      inodeOf(m, 3).entries.push({ name: 'deeper', ino: 5 })
    },
    error: /^inode 5: entry "loop" points at directory 3, its own ancestor \(a cycle\)/,
  },
  { name: 'dir with two parents', mutate: (m) => { m.inodes.push(makeInode(5, 'dir', { entries: [{ name: 'again', ino: 3 }] })); inodeOf(m, 1).entries.push({ name: 'other', ino: 5 }) }, error: /^inode 3: directory has two parents: inode 1 and inode 5 \(entry "again"\)/ },
  { name: 'dir entered twice in one dir', mutate: (m) => { inodeOf(m, 1).entries.push({ name: 'sub2', ino: 3 }) }, error: /^inode 1: directory 3 has two parents: it is entered twice here, the second time as "sub2"/ },
  { name: 'orphan inode', mutate: (m) => { m.inodes.push(makeInode(9, 'file')) }, error: /^inode 9: is not reachable from the root \(an orphan\)/ },
  {
    name: 'orphan cycle of dirs',
    mutate: (m) => {
      m.inodes.push(makeInode(7, 'dir', { entries: [{ name: 'b', ino: 8 }] }), makeInode(8, 'dir', { entries: [{ name: 'a', ino: 7 }] }))
    },
    error: /^inode 7: is not reachable from the root/,
  },
  { name: 'no inodes', mutate: (m) => { m.inodes = [] }, error: /^manifest: root inode 1 is missing/ },
]

t.test('refused mutations', async (t) => {
  for (const c of cases) {
    t.test(c.name, async (t) => {
      const m: Loose = makeManifest()
      c.mutate(m)
      refused(t, () => validateManifest(m), c.error)
    })
  }
})

t.test('accepted variations', async (t) => {
  const ok: Array<[string, (m: Loose) => void]> = [
    ['sparse inode numbers', (m) => { inodeOf(m, 4).ino = 2 ** 50; inodeOf(m, 1).entries[2].ino = 2 ** 50 }],
    ['a config record beside the manifest', (m) => { m.configRecord = 'cfg-0001-abcdef.json' }],
    ['no devices and no extents', (m) => { m.devices = []; delete inodeOf(m, 2).extents }],
    ['a char device with rdev', (m) => { m.inodes.push(makeInode(5, 'char', { rdev: 0x0501 })); inodeOf(m, 1).entries.push({ name: 'tty', ino: 5 }) }],
    ['entry name of 255 bytes', (m) => { inodeOf(m, 1).entries[0].name = 'x'.repeat(255) }],
    ['entry name of 85 three-byte characters', (m) => { inodeOf(m, 1).entries[0].name = '€'.repeat(85) }],
    ['entry name with a surrogate pair', (m) => { inodeOf(m, 1).entries[0].name = 'smile 😀' }],
    ['symlink target of 4095 bytes', (m) => { inodeOf(m, 4).target = 'x'.repeat(4095) }],
    ['inline data with the feature', (m) => { m.features = ['inline-data']; delete inodeOf(m, 2).extents; inodeOf(m, 2).inline = bytes(10000) }],
    ['empty inline file', (m) => { m.features = ['inline-data']; delete inodeOf(m, 2).extents; inodeOf(m, 2).size = 0; inodeOf(m, 2).inline = '' }],
    ['xattr value of 64 KiB', (m) => { inodeOf(m, 2).xattrs = { 'user.big': bytes(65536), 'security.selinux': 'c3lzdGVtX3U6b2JqZWN0X3I6ZmlsZV90OnMwAA==' } }],
    ['times before 1970', (m) => { inodeOf(m, 2).mtime = [-86400, 5] }],
    ['5,000 xattrs, as XFS allows', (m) => { inodeOf(m, 2).xattrs = Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`user.x${i}`, ''])) }],
    ['chattr flags on a file and a directory', (m) => { inodeOf(m, 2).attrs = 0x10; inodeOf(m, 1).attrs = 0x40 }],
    ['a btrfs property', (m) => { inodeOf(m, 2).xattrs = { 'btrfs.compression': Buffer.from('zstd').toString('base64') } }],
    ['extents touching', (m) => { inodeOf(m, 2).extents[0].length = 8192 }],
    ['1-byte extents', (m) => { inodeOf(m, 2).extents = [extent(0, 0, 5, 1), extent(1, 0, 4, 1), extent(9999, 0, 0, 1)] }],
    ['an empty directory', (m) => { inodeOf(m, 3).entries = [] }],
    ['frozen image kind none with fsUuid', (m) => { m.frozenImage = { kind: 'none', mountpoint: '/', fsType: 'xfs', fsUuid: 'x' } }],
  ]
  acceptsEach(t, ok)
})

t.test('golden fixtures', async (t) => {
  const read = (name: string): string => fs.readFileSync(path.join(FIXTURES, name), 'utf8')

  t.test('v1 minimal', async (t) => {
    const m = parseManifest(read('manifest-v1-minimal.json'))
    t.equal(m.inodes.length, 1)
  })

  t.test('v1 every kind', async (t) => {
    const m = parseManifest(read('manifest-v1-every-kind.json'))
    const kinds = new Set(m.inodes.map((n) => n.kind))
    t.same([...kinds].sort(), ['block', 'char', 'dir', 'fifo', 'file', 'socket', 'symlink'])
    t.ok(m.inodes.some((n) => n.inline !== undefined), 'has inline data')
    t.ok(m.inodes.some((n) => n.xattrs !== undefined), 'has xattrs')
    t.ok(m.inodes.some((n) => n.kind === 'file' && n.nlink > 1), 'has a hard link')
    t.ok(m.signature, 'is signed')
  })

  t.test('v1 compressed: btrfs compressed extents, plain and mirrored, one shared by a clone', async (t) => {
    const m = parseManifest(read('manifest-v1-compressed.json'))
    t.same(m.features, ['data-checksums', 'compressed-extents'])
    const extents = m.inodes.flatMap((n) => n.extents ?? [])
    t.same(extents.map((e) => e.compression ?? 'none'), ['zstd', 'none', 'lzo', 'zstd'], 'zstd, plain, lzo; the clone zstd')
    t.equal(extents[3]!.decodedOffset, 20480, 'the clone starts 20 KiB into the decoded extent')
  })

  t.test('v3 future is refused with the upgrade message', async (t) => {
    refused(t, () => parseManifest(read('manifest-v3-future.json')),
      /^unknown manifest version 3: this extfs reads versions 1 and 2; upgrade extfs$/)
  })
})

t.test('a large manifest validates quickly', async (t) => {
  // 100,000 inodes: 500 directories of 199 files, each file with 2 extents and a hole.
  // (Measured: a million such inodes validate in about 0.8 s; JSON.parse of their 380 MB takes longer.)
  const m = makeManifest()
  m.devices[0]!.size = 2 ** 40
  m.inodes = [makeInode(1, 'dir', { entries: [] })]
  let ino = 2
  for (let d = 0; d < 500; d++) {
    const dir = makeInode(ino++, 'dir')
    m.inodes[0]!.entries!.push({ name: `dir${d}`, ino: dir.ino })
    m.inodes.push(dir)
    for (let f = 0; f < 199; f++) {
      const file = makeInode(ino++, 'file', { size: 12288, extents: [extent(0, 0, ino * 16384, 4096), extent(8192, 0, ino * 16384 + 8192, 4096)] })
      dir.entries!.push({ name: `file-${f}.dat`, ino: file.ino })
      m.inodes.push(file)
    }
  }
  const parsed: unknown = JSON.parse(JSON.stringify(m))
  const start = process.hrtime.bigint()
  validateManifest(parsed)
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  t.comment(`validate of ${m.inodes.length} inodes: ${ms.toFixed(0)} ms`)
  t.ok(ms < 3000, 'well within the budget of a few seconds per million inodes')
})

/** Each mutation of the base manifest validates. */
function acceptsEach(t: Test, cases: Array<[string, (m: Loose) => void]>): void {
  for (const [name, mutate] of cases) {
    t.test(name, async (t) => {
      const m: Loose = makeManifest()
      mutate(m)
      t.doesNotThrow(() => validateManifest(m))
    })
  }
}

/** Each mutation of the base manifest is refused with its message. */
function refusesEach(t: Test, cases: Array<[string, (m: Loose) => void, RegExp]>): void {
  for (const [name, mutate, error] of cases) {
    t.test(name, async (t) => {
      const m: Loose = makeManifest()
      mutate(m)
      refused(t, () => validateManifest(m), error)
    })
  }
}

// Feature data-checksums: btrfs mirrored extents with their other copies and one crc32c per sector.
t.test('data checksums', async (t) => {
  const csums = (sectors: number) => Buffer.alloc(sectors * 4, 9).toString('base64')
  /** The base manifest with the feature, its first extent mirrored at 512 KiB and checksummed. */
  const withCsums = (m: Loose) => {
    m.features = ['data-checksums']
    m.dataChecksums = { algorithm: 'crc32c', sectorSize: 4096 }
    Object.assign(inodeOf(m, 2).extents[0], { copies: [{ device: 0, deviceOffset: 512 * 1024 }], csums: csums(1) })
  }
  const ok: Array<[string, (m: Loose) => void]> = [
    ['a mirrored extent with copies and csums', withCsums],
    ['csums without copies (a missing mirror)', (m) => { withCsums(m); delete inodeOf(m, 2).extents[0].copies }],
    ['three other copies (RAID1C4)', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies = [0, 1, 2].map((k) => ({ device: 0, deviceOffset: k * 4096 })) }],
    ['the feature with no extent using it', (m) => { m.features = ['data-checksums']; m.dataChecksums = { algorithm: 'crc32c', sectorSize: 65536 } }],
  ]
  acceptsEach(t, ok)
  const refusedCases: Array<[string, (m: Loose) => void, RegExp]> = [
    ['csums without the feature', (m) => { withCsums(m); m.features = []; delete m.dataChecksums }, /^inode 2: extents\[0\] has copies or csums but the manifest does not declare feature "data-checksums"/],
    ['the feature without dataChecksums', (m) => { withCsums(m); delete m.dataChecksums }, /^manifest: declares feature "data-checksums" but has no dataChecksums/],
    ['dataChecksums without the feature', (m) => { withCsums(m); m.features = [] }, /^manifest: has dataChecksums but does not declare feature "data-checksums"/],
    ['an unknown algorithm', (m) => { withCsums(m); m.dataChecksums.algorithm = 'xxhash64' }, /^dataChecksums: algorithm must be one of crc32c; got "xxhash64"/],
    ['a sector size not a power of two', (m) => { withCsums(m); m.dataChecksums.sectorSize = 3000 }, /^dataChecksums: sectorSize must be a power of two/],
    ['an unknown field in dataChecksums', (m) => { withCsums(m); m.dataChecksums.extra = 1 }, /^dataChecksums: unknown field "extra"/],
    ['too few csums', (m) => { withCsums(m); inodeOf(m, 2).extents[0].length = 8192; inodeOf(m, 2).extents[1].fileOffset = 8192 }, /^inode 2: extents\[0\]\.csums must be strict base64 of 8 bytes \(one checksum per sector\), got 4 bytes/],
    ['csums not base64', (m) => { withCsums(m); inodeOf(m, 2).extents[0].csums = 'ab$=' }, /csums must be strict base64 of 4 bytes/],
    ['an extent of part of a sector', (m) => { withCsums(m); inodeOf(m, 2).extents[0].length = 4000 }, /its length 4000 is not whole sectors of 4096 bytes/],
    ['copies without csums', (m) => { withCsums(m); delete inodeOf(m, 2).extents[0].csums }, /^inode 2: extents\[0\] has copies but no csums to choose between them/],
    ['no copies in the list', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies = [] }, /copies must be an array of 1 to 3 copies/],
    ['four other copies', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies = [0, 1, 2, 3].map((k) => ({ device: 0, deviceOffset: k * 4096 })) }, /copies must be an array of 1 to 3 copies/],
    ['a copy on a device that does not exist', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies[0].device = 1 }, /copies\[0\]\.device 1 does not exist \(the manifest lists 1 devices\)/],
    ['a copy past the device end', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies[0].deviceOffset = 1024 * 1024 - 100 }, /copies\[0\] past device end/],
    ['a copy at a negative offset', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies[0].deviceOffset = -4096 }, /copies\[0\]\.deviceOffset must be a non-negative integer/],
    ['an unknown field in a copy', (m) => { withCsums(m); inodeOf(m, 2).extents[0].copies[0].length = 4096 }, /copies\[0\]: unknown field "length"/],
  ]
  refusesEach(t, refusedCases)
})

// Feature compressed-extents: btrfs compressed extents as stored, always with the csums of their stream.
t.test('compressed extents', async (t) => {
  /** The base manifest's first extent (4096 file bytes) made a zstd extent: 8 KiB on disk, 4 KiB into 128 KiB decoded. */
  const compressed = (m: Loose) => {
    m.features = ['data-checksums', 'compressed-extents']
    m.dataChecksums = { algorithm: 'crc32c', sectorSize: 4096 }
    Object.assign(inodeOf(m, 2).extents[0], {
      compression: 'zstd', diskLength: 8192, decodedLength: 128 * 1024, decodedOffset: 4096, csums: Buffer.alloc(8, 3).toString('base64'),
    })
  }
  const x = (m: Loose) => inodeOf(m, 2).extents[0]
  const ok: Array<[string, (m: Loose) => void]> = [
    ['a zstd extent', compressed],
    ['a mirrored lzo extent', (m) => { compressed(m); Object.assign(x(m), { compression: 'lzo', copies: [{ device: 0, deviceOffset: 512 * 1024 }] }) }],
    ['all of its decoded bytes', (m) => { compressed(m); Object.assign(x(m), { compression: 'zlib', decodedOffset: 0, decodedLength: 4096 }) }],
  ]
  acceptsEach(t, ok)
  const refusedCases: Array<[string, (m: Loose) => void, RegExp]> = [
    ['without the feature', (m) => { compressed(m); m.features = ['data-checksums'] }, /^inode 2: extents\[0\] is compressed but the manifest does not declare feature "compressed-extents"/],
    ['an unknown algorithm', (m) => { compressed(m); x(m).compression = 'lz4' }, /extents\[0\]\.compression must be one of zlib, lzo, zstd, got "lz4"/],
    ['a field missing', (m) => { compressed(m); delete x(m).decodedLength }, /extents\[0\]\.decodedLength must be an integer from 1 to 131072, got nothing/],
    ['only one field', (m) => { m.features.push('compressed-extents'); x(m).decodedOffset = 0 }, /extents\[0\]\.compression must be one of/],
    ['a stream over 128 KiB', (m) => { compressed(m); x(m).diskLength = 128 * 1024 + 4096 }, /diskLength must be an integer from 1 to 131072/],
    ['decoding to over 128 KiB', (m) => { compressed(m); x(m).decodedLength = 128 * 1024 + 1 }, /decodedLength must be an integer from 1 to 131072/],
    ['its bytes past the decoded ones', (m) => { compressed(m); x(m).decodedOffset = 126 * 1024 }, /its 4096 bytes from decodedOffset 129024 run past decodedLength 131072/],
    ['without csums', (m) => { compressed(m); delete x(m).csums }, /extents\[0\] is compressed but has no csums/],
    ['csums of its file length, not its stream', (m) => { compressed(m); x(m).csums = Buffer.alloc(4).toString('base64') }, /csums must be strict base64 of 8 bytes/],
    ['a stream of part of a sector', (m) => { compressed(m); x(m).diskLength = 5000 }, /its diskLength 5000 is not whole sectors/],
    ['a stream past the device end', (m) => { compressed(m); x(m).deviceOffset = 1024 * 1024 - 4096 }, /extents\[0\] past device end: bytes 1044480\.\.1052672/],
  ]
  refusesEach(t, refusedCases)
})
