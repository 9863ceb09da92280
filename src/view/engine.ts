// The narrow interface between the mover's control plane and whatever serves the view to the kernel.
// Two engines implement it: fuse-native (src/fuse-native-engine/, every request in JS) and the native engine
// (src/native-engine/, requests served in C on libfuse3's low-level API; JS stays out of the request path).
import type { RefusalSummary } from './refusals'

export interface MountOptions {
  /** Shown as the mount source: `extfs:<config id>`. */
  fsname: string
  allowOther: boolean
  /**
   * Serve opens and reads for this long without asking the config check again (a lease from
   * `extfs serve`, renewed with setLease); absent: no lease. Native engine only.
   */
  leaseMs?: number
  /**
   * Small files read ahead of the reader at most, bytes (native/view/prefetch.c); 0: none; absent: the
   * engine's default (32 MiB, less on a small host). Native engine only.
   */
  prefetchWindowBytes?: number
  /** Serve this shard of the image alone (docs/shards.md); absent: the whole image. Native engine only. */
  shard?: Shard
}

/** Shard `index` of `count` (0 <= index < count): see docs/shards.md. */
export interface Shard {
  index: number
  count: number
}

/** A shard as `--shard` takes it and logs and status name it: `i/n`. */
export function shardName(shard: Shard): string {
  return `${shard.index}/${shard.count}`
}

export interface ViewEngine {
  /** Inode number the kernel reports for the view's root (serve() checks it to prove the mount). */
  readonly rootIno: number
  /** Mount and start serving; resolves once requests are being answered. */
  mount(mountpoint: string, opts: MountOptions): Promise<void>
  /**
   * Unmount (not lazily) and stop serving. Rejects with a message containing "busy" while the view is
   * in use, and keeps serving then; resolves when the mountpoint was already unmounted from outside.
   */
  unmount(): Promise<void>
  /** Opens and reads refused (image not current) and reads failed since mount: `extfs backup`'s report. */
  refusedRequests(): RefusalSummary
  /** Paths of files read under a map a delta superseded and not read again in full since. */
  taintedFiles(): string[]
  /**
   * Paths of files whose metadata a reader asked for and the kernel could not pass (POSIX ACLs over
   * one page): `extfs backup`'s report. Native engine only.
   */
  unservedMetadata?(): string[]
}

/**
 * EXTFS_ENGINE=fuse-native selects the first engine (src/fuse-native-engine/); anything else the
 * native engine.
 */
export function fuseNativeSelected(): boolean {
  return process.env.EXTFS_ENGINE === 'fuse-native'
}
