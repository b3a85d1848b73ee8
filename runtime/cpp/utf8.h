// What a UTF-8 lead byte says of its character (RFC 3629: no overlong forms, no surrogates, nothing
// past U+10FFFF), shared by the tokenizer's vocabulary reader and the text stream.

#ifndef RWKV_EDGE_UTF8_H_
#define RWKV_EDGE_UTF8_H_

#include <cstddef>

namespace rwkv_edge {

struct Utf8Lead {
  size_t length;          // bytes of the character it starts: 2..4; 0 for ASCII or a byte no multi-byte character starts with
  unsigned char lo, hi;   // the range its second byte must lie in
};

inline Utf8Lead ReadUtf8Lead(unsigned char c) {
  if (c >= 0xC2 && c <= 0xDF) return {2, 0x80, 0xBF};
  if (c >= 0xE0 && c <= 0xEF) return {3, static_cast<unsigned char>(c == 0xE0 ? 0xA0 : 0x80),
                                      static_cast<unsigned char>(c == 0xED ? 0x9F : 0xBF)};
  if (c >= 0xF0 && c <= 0xF4) return {4, static_cast<unsigned char>(c == 0xF0 ? 0x90 : 0x80),
                                      static_cast<unsigned char>(c == 0xF4 ? 0x8F : 0xBF)};
  return {0, 0, 0};
}

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_UTF8_H_
