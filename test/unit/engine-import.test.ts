// A process serving with the native engine must not carry the fuse-native engine's changes: importing
// the mover (src/mover/run-view) loads nothing that requires fuse-native, and importing the fuse-native
// adapter itself changes nothing in fuse-native's module (its FuseEngine unmounts on its own).
// Modules are imported inside the tests, in order: fuse-native first, so its own members are at hand.
import t from 'tap'

const FUSE_NATIVE = require.resolve('fuse-native')

/** Loaded modules, other than this test, that required fuse-native. */
function requirersOfFuseNative(): string[] {
  return Object.values(require.cache)
    .filter((m) => m !== undefined && m !== module && m.children.some((c) => c.id === FUSE_NATIVE))
    .map((m) => m!.id)
}

/** fuse-native's class and its own static and prototype members, to see that none was replaced. */
function fuseNativeMembers(): Record<string, unknown> {
  const Fuse = require('fuse-native')
  const members: Record<string, unknown> = { class: Fuse }
  for (const name of Object.getOwnPropertyNames(Fuse)) members[`static ${name}`] = Fuse[name]
  for (const name of Object.getOwnPropertyNames(Fuse.prototype)) members[name] = Fuse.prototype[name]
  return members
}

t.test('importing the mover neither loads fuse-native nor changes it', async (t) => {
  const ownUnmount = require('fuse-native').unmount
  await import('../../src/mover/run-view')
  t.same(requirersOfFuseNative(), [], 'nothing the mover imports requires fuse-native')
  t.equal(require('fuse-native').unmount, ownUnmount, 'fuse-native\'s unmount is its own')
})

t.test('importing the fuse-native adapter leaves fuse-native untouched', async (t) => {
  const ownUnmount = require('fuse-native').unmount
  const own = fuseNativeMembers()
  // Evaluated afresh, as in a process whose first import it is (the mover may have loaded it above).
  delete require.cache[require.resolve('../../src/fuse-native-engine/adapter')]
  await import('../../src/fuse-native-engine/adapter')
  t.ok(requirersOfFuseNative().some((id) => id.endsWith('adapter.ts')), 'the adapter did load fuse-native')
  t.equal(require('fuse-native').unmount, ownUnmount, 'fuse-native\'s unmount is its own')
  const now = fuseNativeMembers()
  t.same(Object.keys(now).filter((k) => now[k] !== own[k]), [], 'no member of fuse-native\'s class was replaced')
})
