// The native view engine's addon (native/view/, target extfs_view in binding.gyp), loaded once and
// checked against the table layout of ./tables.ts before anything is handed to it.
import path from 'node:path'
import { checkLayout, type NativeLayout } from './tables'
import { checkDeltaLayout } from './delta-tables'
import type { Segment } from '../extents/plan'

/** What C reports to JS, asynchronously, for a log line. */
export interface EngineEvent {
  /**
   * A refused open, a failed device read, a read refused for an expired lease, a POSIX ACL the kernel
   * asked for with a buffer too small for it (the application gets E2BIG: see native/view/ops.c).
   */
  kind: 'open' | 'read' | 'read-refused' | 'acl'
  /** Inode index in the tables. */
  index: number
  /** read, read-refused: file offset of the failed piece or request. */
  offset: number
  /** read: device index. */
  device: number
  /** read: byte offset on the device. */
  deviceOffset: number
  /** acl: the ACL's length as an xattr. */
  size: number
  /** acl: the buffer size the kernel asked with. */
  asked: number
  /** open, read-refused: why the image is not current; read: what the device did; acl: the xattr's name. */
  reason: string
}

/**
 * viewStats: opens served (and distinct regular files opened), read requests and the bytes in their
 * answers, bytes push-ahead stored ahead of readers; the image's regular files and their bytes.
 */
export interface ViewStats { opens: number; filesOpened: number; reads: number; readBytes: number; pushedBytes: number; filesTotal: number; bytesTotal: number }
/** prefetchStats: the window (0: off), bytes taken and not yet retired, files and bytes stored, device reads that failed. */
export interface PrefetchStats { window: number; pending: number; storedFiles: number; storedBytes: number; failedReads: number }

/** prefetchPlan: one device read [start, end) of `device` and the files it holds, or one file read alone. */
export interface PrefetchUnit {
  device: number
  start: number
  end: number
  /** span: the file's bytes at `at` in the device read; inline: from the tables; slow: read alone through the read path. */
  files: { index: number; kind: 'span' | 'inline' | 'slow'; at: number }[]
}

/** POSIX ACLs longer than `limit` bytes as xattrs (largeAcls). */
export interface LargeAcls {
  limit: number
  acls: { index: number; name: string; size: number }[]
}

/** Opaque: one mounted session. */
export type SessionHandle = { readonly __session: unique symbol }

/** Opaque: tables mapped from a file (mapTables). */
export type TablesHandle = { readonly __tables: unique symbol }

/** loadV2's answer: the tables' counts, or the one line saying what is wrong with the body. */
export type LoadV2Result = { error: string } | LoadedV2

export interface LoadedV2 { inodes: number; dirents: number; extents: number; xattrs: number; copies: number; names: number; data: number
      /** Per device: the end of its furthest extent (bytes). */
      deviceEnds: number[]; tablesBytes: number
      /** What the C loader allocated at its peak (its tables are in the file). */
      heapBytes: number }

/** What loadV2 needs from the validated header; features as native/view/load2.h M2L_* bits. */
export interface LoadV2Facts {
  deviceSizes: number[]; features: number; root: number; blockSize: number; csumAlg: number; csumSize: number; sectorSize: number
}

export interface ViewAddon {
  layout(): NativeLayout
  /**
   * Copy and check `tables`, mount with libfuse3 (`options` is a `-o` string) and serve on a session
   * thread. `judge` is called on the JS thread when the config-ID record changed since the last "ok",
   * and for every open and read once the lease expired; it answers through `answer`, at once or later
   * (the FUSE request waits at most 5 s, then is refused; later answers are ignored). `onEvent`
   * receives log events. `leaseMs` is the lease at mount (as setLease). `prefetchWindow`: bytes of small
   * files read ahead of readers at most (native/view/prefetch.c), 0 none, -1 the default, at most
   * 256 MiB. `shardCount` > 0: serve shard `shardIndex` of that many alone (native/view/shard.c),
   * 0: the whole image. Throws if not mounted.
   */
  mount(tables: Buffer | TablesHandle, recordPath: string, mountpoint: string, options: string, judge: (answer: Answer) => void, onEvent: (ev: EngineEvent) => void, leaseMs: number, prefetchWindow: number,
    shardIndex: number, shardCount: number): SessionHandle
  /** umount(2) (not lazy), end the session, free everything. Rejects "...busy" and keeps serving. */
  unmount(handle: SessionHandle): Promise<void>
  /**
   * Apply a delta packed by delta-tables.ts in one step: the named files' extent lists are replaced,
   * the devices appended (their fds, open until unmount resolved, in the delta's device order), the
   * kernel's cached pages of those files dropped, the generation increased by one. Throws (changing
   * nothing) when the delta is malformed or does not fit the tables; no JS thread sync I/O meanwhile.
   */
  applyDelta(handle: SessionHandle, delta: Buffer, deviceFds: number[]): void
  /** Inode indexes (ascending) of files served under a map a delta has since replaced, not yet re-read in full. */
  tainted(handle: SessionHandle): number[]
  /** Map generation: 0 at mount, +1 per applied delta. */
  generation(handle: SessionHandle): number
  /** Events (refused opens, failed reads, unserved ACLs) C could not deliver since mount: a full queue. */
  eventsLost(handle: SessionHandle): number
  /** Size of the regular file at inode index `index`; -1 when that is no regular file. */
  fileSize(handle: SessionHandle, index: number): number
  /** Serve opens and reads without asking judge() for `ms` more milliseconds; ms < 0: no lease (the default). */
  setLease(handle: SessionHandle, ms: number): void
  /** What the prefetch of small files did since mount (native/view/prefetch.c); zeros once unmounted. */
  viewStats(handle: SessionHandle): ViewStats
  prefetchStats(handle: SessionHandle): PrefetchStats
  /**
   * The POSIX ACLs in `tables` longer than `limit` bytes as xattrs; without `limit`, the page size,
   * the buffer the kernel reads a FUSE filesystem's ACLs into: those no reader of the view can have.
   * Copies and checks the tables (throws when they are refused).
   */
  largeAcls(tables: Buffer | TablesHandle, limit?: number): LargeAcls
  /**
   * The image split `count` ways (native/view/shard.c, docs/shards.md): per shard its regular files,
   * their bytes, its inodes and its largest file; per inode index its shard, SHARD_NONE for a directory with entries
   * (shown by every shard it leads to). Mapped tables not mounted yet are checked whole first.
   */
  shardPlan(tables: Buffer | TablesHandle, count: number): ShardPlan
  /** Per inode index, 1 where shard `index` of `count` shows it: its inodes, the root, the directories leading to them. */
  shardVisible(tables: Buffer | TablesHandle, index: number, count: number): Uint8Array

  // Tables in a file (a version 2 body, a version 1 manifest's re-encoded: native/view/load2*.c, tables_file.c).
  /** An unlinked file in `dir` (O_TMPFILE), open read-write: where loadV2 writes the tables. */
  openTablesFile(dir: string): number
  /**
   * Decode, check and pack the body of the version 2 manifest open at `manifestFd` (bytes
   * [start, end)) into `tablesFd`; the trailer's counts and the validated header's facts given.
   * Synchronous. A body it refuses is `{error}`, one line naming the problem and the inode.
   * `onProgress(done, total, inodes)`, called inside at each MiB read and at the end: bytes of reading
   * done of `total` (twice the body: pass 1 reads it, passes 2 and 3 read it again), inodes written.
   */
  loadV2(manifestFd: number, body: { start: number; end: number }, trailer: { inodes: number; dirs: number; entries: number }, facts: LoadV2Facts, tablesFd: number,
    onProgress?: (done: number, total: number, inodes: number) => void): LoadV2Result
  /**
   * The tables file mapped read-only, its sections checked (header, every section inside the file;
   * throws "mapTables: bad tables: ..."); the handle keeps its own fd. mount() checks it whole (xt_check);
   * largeAcls(handle) answers only after that.
   */
  mapTables(fd: number): TablesHandle
  /** Writes one device fd per device into the tables file (before mount). */
  setTablesDevices(handle: TablesHandle, fds: number[]): void
  /** The inode index of `ino`, or -1. */
  tablesIndex(handle: TablesHandle, ino: number): number
  /** The ino at inode index `index`, or -1. */
  tablesIno(handle: TablesHandle, index: number): number
  /** The bytes of the path of the inode's first name ("/a/b"). */
  tablesPath(handle: TablesHandle, index: number): Buffer
  /** The size of the regular file at `index`, or -1. */
  tablesFileSize(handle: TablesHandle, index: number): number
  tablesCounts(handle: TablesHandle): { inodes: number; dirents: number; extents: number; xattrs: number; names: number; data: number; bytes: number; sfBlocks: number }

  // For tests only: the C that serves reads, called with no mount (test/unit/native-read-plan.test.ts,
  // test/unit/native-read-errors.test.ts).
  // The control plane never calls these; each copies and checks the tables it is given, every call.
  /** What mount() would refuse in `tables` (native/view/engine.c xt_check), or null when it would accept them. */
  checkTables(tables: Buffer): string | null
  /**
   * The pieces, in file order, of a read of `size` bytes at `offset` of the regular file at inode
   * index `index`, as native/view/read.c plans the FUSE read (clipped at EOF). Throws when the
   * tables are refused or the index is no regular file.
   */
  planRead(tables: Buffer, index: number, offset: number, size: number): PlannedPiece[]
  /**
   * The units prefetch (native/view/prefetch.c) takes, in order, from the directory at inode index
   * `dirIndex` with a window of `window` bytes that no reader retires: nothing is read. Throws when the
   * tables are refused or the index is no directory.
   */
  prefetchPlan(tables: Buffer, dirIndex: number, window: number): PrefetchUnit[]
  /**
   * What applyDelta would refuse in `delta` (native/view/delta.c), given `deviceFdCount` device fds,
   * on a view of `tables` that no delta has changed yet; null when it would apply it.
   */
  checkDelta(tables: Buffer, delta: Buffer, deviceFdCount: number): string | null
  /**
   * The bytes a compressed extent's encoded `stream` decodes to (native/view/decode.c, as read.c
   * decodes it): `algorithm` as COMPRESSION_ALG numbers it, at most `decodedLength` (1 to 128 KiB)
   * bytes, lzo's segments aligned to `sectorSize`. Throws "decode: <why>" when the stream does not
   * decode, ends early or would decode to more.
   */
  decode(algorithm: number, stream: Buffer, decodedLength: number, sectorSize: number): Buffer
  /**
   * What the FUSE read of `size` bytes at `offset` of the regular file at inode index `index` answers
   * (native/view/read.c: the plan, then pread(2) on the device fds packed in `tables`): the bytes, or
   * an errno with the `read failed` event a mount would log. Throws when the tables are refused or the
   * index is no regular file.
   */
  readFile(tables: Buffer, index: number, offset: number, size: number): ReadResult
}

/** readFile's answer: the reply's bytes, or the errno the reader gets and the failure as a mount logs it. */
export type ReadResult =
  | { errno: 0; bytes: Buffer }
  | { errno: number; failed?: { offset: number; device: number; deviceOffset: number; reason: string } }

/** A piece of a read planned in C: src/extents/plan.ts's Segment, or an inline file's bytes (the whole reply). */
export type PlannedPiece = Segment | { kind: 'inline'; bytes: Buffer }

/** shardPlan's answer. */
export interface ShardPlan {
  /** Regular files (empty ones included), their bytes, every inode of the shard, the bytes of its largest file. */
  shards: { files: number; bytes: number; inodes: number; largest: number }[]
  shardOf: Uint32Array
}
/** shardOf's value for a directory with entries: in no shard. */
export const SHARD_NONE = 0xffffffff

/** judge()'s reply: the first call counts. */
export type Answer = (ok: boolean, reason?: string) => void

let loaded: ViewAddon | undefined

/**
 * The addon, built by node-gyp into build/Release. EXTFS_ADDON_DIR names another directory holding
 * both addons (scripts/sanitize points it at an AddressSanitizer build).
 */
export function viewAddon(): ViewAddon {
  if (loaded) return loaded
  // dist/native-engine/addon.js and src/native-engine/addon.ts both sit two levels below the package root.
  const file = path.join(process.env.EXTFS_ADDON_DIR || path.join(__dirname, '..', '..', 'build', 'Release'), 'extfs_view.node')
  const addon = require(file) as ViewAddon
  checkLayout(addon.layout())
  checkDeltaLayout(addon.layout())
  loaded = addon
  return addon
}
