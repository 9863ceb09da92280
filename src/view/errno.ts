// Linux errno values the view answers with (asm-generic/errno-base.h, errno.h).
export enum Errno {
  EPERM = 1,
  ENOENT = 2,
  EIO = 5,
  EACCES = 13,
  ENOTDIR = 20,
  EISDIR = 21,
  EINVAL = 22,
  EROFS = 30,
  ERANGE = 34,
  ENODATA = 61,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESTALE = 116,
}
