// What the two programs (run.cc, runner.cc) share as clients of the C interface: their two kinds of
// failure, a handle that frees what the interface allocated, and how a failure ends the program.

#ifndef RWKV_EDGE_CLIENT_H_
#define RWKV_EDGE_CLIENT_H_

#include "rwkv_edge.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>

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

// `text` as a decimal integer in [lo, hi]; InputError naming `what` otherwise.
// What an option loop does with an argument that is none of its options: --help prints `usage` and
// exits 0; another "-..." is unknown; the first other argument is the bundle, a second one is refused.
inline void OtherArgument(const std::string& arg, std::string& bundle, const char* usage) {
  if (arg == "-h" || arg == "--help") {
    std::cout << usage << "\n";
    std::exit(0);
  }
  if (!arg.empty() && arg[0] == '-') throw InputError("unknown option " + arg + "; " + usage);
  if (!bundle.empty()) throw InputError("unexpected argument '" + arg + "'; " + usage);
  bundle = arg;
}

inline int64_t ParseInt(const std::string& text, const std::string& what, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE) throw InputError(what + ": not an integer: '" + text + "'");
  if (value < lo || value > hi) {
    throw InputError(what + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + text);
  }
  return value;
}

constexpr int kExitRuntime = 1;  // the model failed to load or run, or memory ran out
constexpr int kExitInput = 2;    // bad arguments, bundle, state file or input: the user can fix it

// Runs a program's body; what it throws becomes one line on stderr, "PROGRAM: error: MESSAGE", and the
// exit status: kExitInput for an InputError or an ApiError the user can fix, kExitRuntime otherwise.
template <typename Body>
int RunProgram(const char* program, Body&& body) {
  std::string message;
  int code = kExitInput;
  try {
    return body();
  } catch (const ApiError& e) {
    message = e.what();
    code = e.status == RWKV_EDGE_ERR_RUNTIME || e.status == RWKV_EDGE_ERR_MEMORY ? kExitRuntime : kExitInput;
  } catch (const InputError& e) {
    message = e.what();
  } catch (const std::exception& e) {
    message = e.what();
    code = kExitRuntime;
  }
  std::fflush(stdout);
  std::fprintf(stderr, "%s: error: %s\n", program, message.substr(0, message.find('\n')).c_str());
  return code;
}

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_CLIENT_H_
