// SHA-256 (FIPS 180-4), small and dependency-free: the runner checks a bundle's files against the
// sha256 sums in its manifest on boards where OpenSSL may not be installed.

#ifndef RWKV_EDGE_SHA256_H_
#define RWKV_EDGE_SHA256_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace rwkv_edge {

class Sha256 {
 public:
  Sha256();
  // Appends `size` bytes to the message; any split of a message into Update calls gives the same digest.
  void Update(const void* data, size_t size);
  // The digest as 64 lowercase hex digits, as Python's hashlib.sha256(...).hexdigest() writes it.
  // Finishes the message: the object is spent afterwards.
  std::string HexDigest();

 private:
  void Compress(const uint8_t* block);

  uint32_t state_[8];
  uint8_t pending_[64];  // the start of a block not yet compressed
  size_t pending_size_ = 0;
  uint64_t total_bytes_ = 0;
};

// The sha256 of `size` bytes at `data`, in hex.
std::string Sha256Hex(const void* data, size_t size);

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_SHA256_H_
