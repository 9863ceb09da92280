// The whole flow on real devices with the native engine (test/helpers/scenarios/backup.ts), on whole
// devices and partitions of ext4 and XFS; the fuse-native engine runs it too (fuse-native-engine.test.ts).
import t from 'tap'
import { backupRoundTrip, LAYOUTS } from '../helpers/scenarios/backup'
import { NATIVE_ENGINE } from '../helpers/engines'

for (const layout of Object.values(LAYOUTS)) void backupRoundTrip(t, layout, NATIVE_ENGINE)
