// Signedness in the layout contract between native/view/tables.h and src/native-engine/tables.ts: the addon
// reports it for every field, and checkLayout refuses an addon that reads the same bytes as other
// numbers (an fd of -1 as 4294967295, a time before 1970 as a date in the far future).
import t from 'tap'
import { checkLayout, LAYOUT, type NativeLayout, type StructLayout } from '../../src/native-engine/tables'
import { viewAddon } from '../../src/native-engine/addon'

type Fields = Record<string, { offset: number; size: number; signed?: boolean }>
const fieldsOf = (layout: NativeLayout, name: string): Fields => (layout[name] as { fields: Fields }).fields
const copy = (layout: NativeLayout): NativeLayout => JSON.parse(JSON.stringify(layout)) as NativeLayout

t.test('the addon reports the signedness of every field, as tables.ts types it', async (t) => {
  const native = viewAddon().layout()
  const differ: string[] = []
  for (const [name, js] of Object.entries(LAYOUT)) {
    for (const [field, f] of Object.entries(js.fields as StructLayout['fields'])) {
      if (fieldsOf(native, name)[field]?.signed !== (f.type === 'i32' || f.type === 'i64')) differ.push(`${name}.${field}`)
    }
  }
  t.same(differ, [], 'every field of every struct')
  t.equal(fieldsOf(native, 'device').fd!.signed, true, 'device.fd is signed (-1: a retired device)')
  t.equal(fieldsOf(native, 'inode').mtime_sec!.signed, true, 'inode.mtime_sec is signed')
  t.equal(fieldsOf(native, 'inode').size!.signed, false, 'inode.size is unsigned')
})

t.test('checkLayout refuses an addon whose field signedness differs', async (t) => {
  const native = viewAddon().layout()
  t.doesNotThrow(() => checkLayout(native))
  const cases: [string, string, boolean | undefined, RegExp][] = [
    ['device', 'fd', false, /device\.fd: unsigned in C, signed in JS/],
    ['inode', 'atime_sec', false, /inode\.atime_sec: unsigned in C, signed in JS/],
    ['extent', 'length', true, /extent\.length: signed in C, unsigned in JS/],
    ['delta_file', 'count', true, /delta_file\.count: signed in C, unsigned in JS/],
    ['header', 'n_inodes', undefined, /header\.n_inodes: signedness absent in C, unsigned in JS/],
  ]
  for (const [name, field, signed, message] of cases) {
    const tampered = copy(native)
    if (signed === undefined) delete fieldsOf(tampered, name)[field]!.signed
    else fieldsOf(tampered, name)[field]!.signed = signed
    t.throws(() => checkLayout(tampered), message, `${name}.${field}`)
  }
})
