// The walker's inode numbering for what the image adds (a synthetic root, mount points), at the scale
// of a file server: a spread of a million keys into Math.max overflows the stack.
import t from 'tap'
import { Walker, type WalkTarget } from '../../src/export/walk'

t.test('a free inode number above a million described inodes', async (t) => {
  const walker = new Walker({} as WalkTarget)
  for (let ino = 1; ino <= 1_000_000; ino++) walker.inodes.set(ino * 3, { ino: ino * 3 } as never)
  t.equal(walker.freeIno(), 3_000_001)
})
