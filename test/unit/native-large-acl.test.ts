// The C that finds the POSIX ACLs the kernel cannot pass through FUSE (native/view/ops.c
// xt_acls_over, through the addon's largeAcls), with no mount: on tables packed from a manifest whose
// ACLs straddle the limit, next to a larger xattr that is no ACL (a reader's own buffer holds it).
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { validateManifest } from '../../src/manifest/validate'
import { viewAddon } from '../../src/native-engine/addon'
import { inodeOf, makeManifest } from '../helpers/manifest-factory'
import { packedTables } from '../helpers/packed-tables'

/** An ACL xattr value (version 2, then 8 bytes per entry) of exactly `bytes` bytes. */
function aclOf(bytes: number): string {
  const value = Buffer.alloc(bytes)
  value.writeUInt32LE(2, 0)
  return value.toString('base64')
}

const addon = viewAddon()
const m = makeManifest()
inodeOf(m, 1).xattrs = { 'system.posix_acl_default': aclOf(4 + 8 * 600) }
inodeOf(m, 2).xattrs = { 'user.big': Buffer.alloc(65536, 7).toString('base64'), 'system.posix_acl_access': aclOf(4 + 8 * 511) }
inodeOf(m, 3).xattrs = { 'system.posix_acl_access': aclOf(4 + 8 * 512), 'system.posix_acl_default': aclOf(4 + 8 * 2000) }
const { image, paths } = packedTables(validateManifest(m), [3])
const named = (acls: { index: number; name: string; size: number }[]) => acls.map((a) => ({ ...a, index: paths.ino(a.index) }))

t.test('without a limit: those over the page size, the buffer the kernel reads ACLs into', async (t) => {
  const { limit, acls } = addon.largeAcls(image)
  t.equal(limit, Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' })), 'the page size')
  t.same(named(acls), [
    { index: 1, name: 'system.posix_acl_default', size: 4804 },
    { index: 3, name: 'system.posix_acl_access', size: 4100 },
    { index: 3, name: 'system.posix_acl_default', size: 16004 },
  ], 'each ACL over it, in inode order; 511 entries (4,092 bytes) and a 64 KiB user xattr are not')
})

t.test('an explicit limit: longer than it, not equal', async (t) => {
  t.same(named(addon.largeAcls(image, 4092).acls).map((a) => a.size), [4804, 4100, 16004])
  t.same(named(addon.largeAcls(image, 4091).acls).map((a) => a.size), [4804, 4092, 4100, 16004])
  t.same(addon.largeAcls(image, 65536).acls, [])
})

t.test('tables the C checker refuses are refused here too', async (t) => {
  t.throws(() => addon.largeAcls(Buffer.alloc(64)), /largeAcls: bad tables: not a table image/)
  t.throws(() => addon.largeAcls(image, -1), /largeAcls\(tables, limit >= 0\?\)/)
})
