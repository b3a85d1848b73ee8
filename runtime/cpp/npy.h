// NPY v1.0 files (little-endian, C order): what rwkv-edge-runner reads and writes.

#ifndef RWKV_EDGE_NPY_H_
#define RWKV_EDGE_NPY_H_

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "client.h"

namespace rwkv_edge {

// A file that cannot be read or written, or is not the array expected: one line naming it.
struct NpyError : InputError {
  using InputError::InputError;
};

// Writes `nbytes` of `data` as an array of numpy dtype `descr` ("<f4", "<f8") and `shape`: to
// PATH.partial, then renamed, so an interrupted run leaves no half-written file behind.
void WriteNpy(const std::string& path, const char* descr, const void* data, size_t nbytes,
              const std::vector<int64_t>& shape);

// A float32 C-order array whose shape is `want` with or without a leading batch axis of 1.
std::vector<float> ReadNpyF32(const std::string& path, const std::vector<int64_t>& want);

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_NPY_H_
