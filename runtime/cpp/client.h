// What the two programs (run.cc, runner.cc) share as clients of the C interface: their two kinds of
// failure and a handle that frees what the interface allocated.

#ifndef RWKV_EDGE_CLIENT_H_
#define RWKV_EDGE_CLIENT_H_

#include "rwkv_edge.h"

#include <stdexcept>

namespace rwkv_edge {

// A mistake the user can fix (exit 2).
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A call of the C interface that failed: its status and message.
struct ApiError : std::runtime_error {
  ApiError(rwkv_edge_status s, const char* message) : std::runtime_error(message), status(s) {}
  rwkv_edge_status status;
};

// Throws ApiError with the interface's last error where `status` is not RWKV_EDGE_OK.
inline void Check(rwkv_edge_status status) {
  if (status != RWKV_EDGE_OK) throw ApiError(status, rwkv_edge_last_error());
}

// Frees a handle of the C interface when it goes.
template <typename T, void (*Free)(T*)>
struct Handle {
  T* p = nullptr;
  ~Handle() { Free(p); }
};

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_CLIENT_H_
