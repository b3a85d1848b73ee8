// State files, format "rwkv-edge.state/1" (docs/native.md): a safetensors file holding a session's
// state tensors in the manifest's order (shapes without the batch axis) and, optionally, its logits,
// tagged with the architecture and source sha256 of the model that saved it.

#ifndef RWKV_EDGE_STATE_FILE_H_
#define RWKV_EDGE_STATE_FILE_H_

#include "bundle_reader.h"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace rwkv_edge {

// A state file or buffer of another format, model or shape: one line naming the file and the problem.
struct StateError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A file that cannot be read or written.
struct IoError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct LoadedState {
  std::vector<float> state;   // every tensor in manifest order, C order
  std::vector<float> logits;  // vocab_size floats; empty where the file has none
};

// Writes `state` (every tensor of `manifest`'s state, in order) and `logits` (vocab_size floats, or
// nullptr: none) to `path`: written to PATH.partial, then renamed into place. IoError where it cannot.
void SaveStateFile(const std::string& path, const Manifest& manifest, const float* state, const float* logits);

// Reads a state file saved from the model of `manifest`: every check of the format, StateError for
// any that fails, IoError where the file cannot be read.
LoadedState LoadStateFile(const std::string& path, const Manifest& manifest);

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_STATE_FILE_H_
