// Which mounted filesystems export takes: a realtime XFS would be mapped silently wrong (its files'
// extents are on the realtime device), so it is refused. This VM's kernel cannot mount one (no
// CONFIG_XFS_RT: "Function not implemented"), so the check is tested on mount table entries.
import t from 'tap'
import { whyUnsupported } from '../../src/export/export'
import type { MountEntry } from '../../src/mapping/mountinfo'

const entry = (fsType: string, superOptions: string[]): MountEntry =>
  ({ major: 7, minor: 1, mountpoint: '/srv', fsType, source: '/dev/loop1', readOnly: false, superOptions })

t.test('ext4, btrfs and XFS without a realtime device are taken', async (t) => {
  for (const fs of ['ext4', 'ext3', 'btrfs']) t.equal(whyUnsupported(entry(fs, ['rw'])), undefined, fs)
  t.equal(whyUnsupported(entry('xfs', ['rw', 'attr2', 'inode64', 'logbufs=8', 'noquota'])), undefined, 'xfs')
})

t.test('other types and a realtime XFS are refused, saying why', async (t) => {
  t.match(whyUnsupported(entry('tmpfs', ['rw'])), /filesystem type tmpfs is not supported/)
  t.match(whyUnsupported(entry('xfs', ['rw', 'rtdev=/dev/loop2', 'noquota'])), /XFS with a realtime device is not supported/)
})
