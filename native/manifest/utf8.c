// See utf8.h.
#include "utf8.h"

bool m2_valid_utf8(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t len = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (len == 0 || c > 0xf4 || i + len > n) return false;
    uint8_t c1 = s[i + 1];
    if ((c1 & 0xc0) != 0x80) return false;
    if (c == 0xe0 && c1 < 0xa0) return false; // overlong
    if (c == 0xed && c1 > 0x9f) return false; // surrogate
    if (c == 0xf0 && c1 < 0x90) return false; // overlong
    if (c == 0xf4 && c1 > 0x8f) return false; // above U+10FFFF
    for (size_t k = 2; k < len; k++)
      if ((s[i + k] & 0xc0) != 0x80) return false;
    i += len;
  }
  return true;
}
