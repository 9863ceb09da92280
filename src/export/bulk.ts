// What the bulk mappers (bulk-ext4.ts, bulk-btrfs.ts) share: the choice of mapper, their refusal, where
// the body is written, and the mount points that rule them out (the walker serves those as empty
// directories; a mapper reading the filesystem underneath would serve what they cover).
import path from 'node:path'
import { readMountTable } from '../mapping/mountinfo'

export type MapperChoice = 'auto' | 'bulk' | 'vfs'

/** Why a bulk mapper does not apply (a refusal), thrown before or while it runs: auto falls back to the walker. */
export class BulkRefused extends Error {}

/**
 * What a native bulk mapper threw, as export treats it: a refusal (code ERR_BULK_REFUSED) becomes
 * BulkRefused, a failure (ERR_BULK_FAILED) what `onFailed` makes of its message, anything else itself.
 */
export function bulkError(err: unknown, onFailed: (message: string) => Error): unknown {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ERR_BULK_REFUSED') return new BulkRefused((err as Error).message)
  if (code === 'ERR_BULK_FAILED') return onFailed((err as Error).message)
  return err
}

/** Where the body is written while the manifest is assembled: beside the manifest, never on the frozen filesystem. */
export function bodyPathOf(output: string): string {
  return path.join(path.dirname(output), `.${path.basename(output)}.body-${process.pid}`)
}

/** Mount points strictly below `dir`. */
export function mountsUnder(dir: string): string[] {
  const prefix = dir === '/' ? '/' : dir + '/'
  return readMountTable().map((m) => m.mountpoint).filter((p) => p !== dir && p.startsWith(prefix))
}
