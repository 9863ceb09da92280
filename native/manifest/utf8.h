// Strict UTF-8, the one check both sides of format 2 use: the bulk mappers (which declare feature
// byte-names when a name fails it) and the view's loader (which refuses such a name without the
// feature). Two copies could disagree, and a manifest we wrote would then not mount.
#ifndef EXTFS_MANIFEST_UTF8_H
#define EXTFS_MANIFEST_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Strict UTF-8 as Node decodes it (no overlongs, no surrogates, nothing above U+10FFFF): a name, symlink
// target or xattr name that is not needs feature byte-names.
bool m2_valid_utf8(const uint8_t *s, size_t n);

#endif
