// The FUSE adapter: a thin shell turning fuse-native's path-based callbacks into FrozenView calls and
// typed errors into negative errnos. No logic lives here; only integers reach fuse-native's callbacks.
import Fuse from 'fuse-native'
import { execFile } from 'node:child_process'
import { createRequire } from 'node:module'
import path from 'node:path'
import type { Logger } from 'pino'
import type { FrozenView, Attr } from './frozen-view'
import type { MountOptions, ViewEngine } from '../view/engine'
import type { RefusalSummary } from '../view/refusals'
import { statfsFits } from './limits'
import { ViewError } from '../errors'
import { Errno } from '../view/errno'

type Cb = (...args: any[]) => void

/** ViewError carries its errno; anything else is a bug and becomes EIO, logged once here. */
function errnoOf(err: unknown, log: Logger, op: string, path: string): number {
  if (err instanceof ViewError) return -err.errno
  log.error({ op, path, err: (err as Error)?.message }, 'unexpected error')
  return -Errno.EIO
}

// fuse-native takes times as unsigned milliseconds: sub-ms parts are dropped, and limits.ts refuses an
// image with times it cannot carry at all.
function ms(t: [number, number]): number {
  return t[0] * 1000 + Math.floor(t[1] / 1_000_000)
}

function toStat(a: Attr) {
  return {
    mode: a.mode, uid: a.uid, gid: a.gid, size: a.size, nlink: a.nlink, ino: a.ino, rdev: a.rdev,
    blksize: a.blksize, blocks: a.blocks, atime: ms(a.atime), mtime: ms(a.mtime), ctime: ms(a.ctime),
  }
}

const O_ACCMODE = 3

export function fuseOperations(view: FrozenView, log: Logger): Record<string, Cb> {
  // Guard: resolve the path, run the worker, map errors to an errno in one place.
  const guard = (op: string, path: string, cb: Cb, worker: (ino: number) => void) => {
    try {
      worker(view.resolve(path))
    } catch (err) {
      cb(errnoOf(err, log, op, path))
    }
  }
  const readOnly = (cb: Cb) => cb(-Errno.EROFS)
  const ops: Record<string, Cb> = {
    getattr: (path, cb) => guard('getattr', path, cb, (ino) => cb(0, toStat(view.getattr(ino)))),
    fgetattr: (path, _fd, cb) => guard('getattr', path, cb, (ino) => cb(0, toStat(view.getattr(ino)))),
    readdir: (path, cb) =>
      guard('readdir', path, cb, (ino) => {
        const entries = view.readdir(ino)
        cb(0, entries.map((e) => e.name), entries.map((e) => toStat(view.getattr(e.ino))))
      }),
    open: (path, flags, cb) => {
      if ((flags & O_ACCMODE) !== 0) return readOnly(cb)
      guard('open', path, cb, (ino) => {
        view.open(ino, path)
        cb(0, 0)
      })
    },
    read: (path, _fd, buf, len, pos, cb) => guard('read', path, cb, (ino) => cb(view.read(ino, buf, len, pos, path))),
    release: (_path, _fd, cb) => cb(0),
    readlink: (path, cb) => guard('readlink', path, cb, (ino) => cb(0, view.readlink(ino))),
    listxattr: (path, cb) => guard('listxattr', path, cb, (ino) => cb(0, view.listxattr(ino))),
    getxattr: (path, name, _position, cb) => guard('getxattr', path, cb, (ino) => cb(0, view.getxattr(ino, name))),
    statfs: (_path, cb) => {
      const figures = view.statfs()
      if (!statfsFits(figures)) return cb(-Errno.EOVERFLOW)
      cb(0, figures)
    },
  }
  for (const op of ['write', 'create', 'truncate', 'ftruncate', 'unlink', 'rename', 'link', 'symlink', 'mkdir', 'rmdir',
    'mknod', 'chmod', 'chown', 'utimens', 'setxattr', 'removexattr']) {
    ops[op] = (...args: unknown[]) => readOnly(args[args.length - 1] as Cb)
  }
  return ops
}

/** The call of fuse-native's binding that lets go of a session's hold on the event loop. */
interface FuseNativeBinding {
  fuse_native_unmount(mnt: string, thread: Buffer): void
}

/** The binding fuse-native itself loaded (node-gyp-build requires the same file: one module per process). */
function fuseNativeBinding(): FuseNativeBinding {
  const fuseNative = require.resolve('fuse-native')
  return createRequire(fuseNative)('node-gyp-build')(path.dirname(fuseNative)) as FuseNativeBinding
}

/**
 * Three gaps in fuse-native 2.2.6, closed in this subclass only (fuse-native's module stays as it is
 * for anything else in the process):
 * - no switch for `ro` or `use_ino`; both matter (mutations refused by the kernel, hard links sharing an
 *   inode number), so they are appended to the option string it builds;
 * - getxattr/listxattr ignore the caller's buffer size: a value larger than the buffer (tar probes with
 *   a small one) overflowed it instead of answering ERANGE, so the caller can retry with a larger one;
 * - it unmounts with `fusermount -uz`, a lazy unmount: a view in use would be detached under its
 *   readers' feet and report success.
 */
class ReadOnlyFuse extends Fuse {
  override _fuseOptions(): string {
    const base = super._fuseOptions()
    return (base ? base + ',' : '-o') + 'ro,use_ino'
  }

  _op_getxattr(signal: Cb, path: string, name: string, valueBuf: Buffer, position: number): void {
    this.ops.getxattr(path, name, position, (err: number, value?: Buffer) => {
      if (err || !value) return signal(err || -Errno.ENODATA, valueBuf.buffer)
      if (valueBuf.length === 0) return signal(value.length, valueBuf.buffer) // size probe
      if (value.length > valueBuf.length) return signal(-Errno.ERANGE, valueBuf.buffer)
      value.copy(valueBuf)
      signal(value.length, valueBuf.buffer)
    })
  }

  _op_listxattr(signal: Cb, path: string, listBuf: Buffer): void {
    this.ops.listxattr(path, (err: number, names?: string[]) => {
      if (err || !names) return signal(err || -Errno.EIO, listBuf.buffer)
      const list = Buffer.from(names.map((n) => n + '\0').join(''), 'utf8')
      if (listBuf.length === 0) return signal(list.length, listBuf.buffer) // size probe
      if (list.length > listBuf.length) return signal(-Errno.ERANGE, listBuf.buffer)
      list.copy(listBuf)
      signal(list.length, listBuf.buffer)
    })
  }

  /**
   * Unmounts for real, so a busy view says so and keeps serving; a mountpoint already gone (unmounted
   * from outside) counts as done. Then fuse-native lets go of its loop, as its own close does.
   */
  override _close(cb: (err: Error | null) => void): void {
    execFile('umount', [this.mnt], (err, _stdout, stderr) => {
      if (err && !/not mounted|no mount point/.test(stderr)) return cb(new Error(stderr.trim() || err.message))
      try {
        fuseNativeBinding().fuse_native_unmount(this.mnt, this._thread)
      } catch (e) {
        return cb(e as Error)
      }
      cb(null)
    })
  }
}

/** A mounted view. The immutable image allows long kernel caching of entries, attributes and data. */
export class FuseEngine implements ViewEngine {
  private fuse?: ReadOnlyFuse

  constructor(private readonly view: FrozenView, private readonly log: Logger) {}

  get rootIno(): number {
    return this.view.rootIno
  }

  mount(mountpoint: string, opts: MountOptions): Promise<void> {
    const day = 86400
    this.fuse = new ReadOnlyFuse(mountpoint, fuseOperations(this.view, this.log), {
      fsname: opts.fsname, subtype: 'extfs', allowOther: opts.allowOther, defaultPermissions: true,
      kernelCache: true, entryTimeout: day, attrTimeout: day, acAttrTimeout: day,
    })
    return new Promise((resolve, reject) => this.fuse!.mount((err) => (err ? reject(err) : resolve())))
  }

  unmount(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.fuse) return resolve()
      this.fuse.unmount((err) => (err ? reject(err) : resolve()))
    })
  }

  refusedRequests(): RefusalSummary {
    return this.view.refusedRequests()
  }

  /** None: this engine never follows a delta; reads under a changed record are refused instead. */
  taintedFiles(): string[] {
    return []
  }
}
