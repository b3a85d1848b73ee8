// The model of an opened bundle and a session on it: the Relax VM loaded from the hashed bytes of
// model.so, held to its interface(), its mapped weights; a session's state and logits, fed by steps
// through `main(token, state..., weights...) -> (logits, state'...)` or by prompts through whole
// chunks of the bundle's prefill function and then steps (as the Python TvmBackend does).

#ifndef RWKV_EDGE_MODEL_H_
#define RWKV_EDGE_MODEL_H_

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>

#include "bundle_reader.h"

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

struct rwkv_edge_model;  // rwkv_edge.h

namespace rwkv_edge {

// The target triple of the bundles this build runs ("x86_64-linux-gnu", "aarch64-linux-gnu", ...).
extern const char* const kHostTriple;


class Model {
 public:
  // Takes what OpenBundle checked. BundleError for a bundle of another triple (before its code
  // loads) or a library that disagrees with its manifest; ffi::Error where TVM fails.
  // `num_threads` (> 0) sizes TVM's thread pool for the model's calls; 0: TVM's default.
  explicit Model(OpenedBundle bundle, int num_threads = 0);

  const Manifest& manifest() const { return manifest_; }
  size_t state_size() const { return state_size_; }  // floats in all the state tensors

  std::vector<ffi::Tensor> InitialState() const;
  // One step: writes the logits after `token` (vocab_size floats), returns the new state.
  std::vector<ffi::Tensor> Step(int64_t token, const std::vector<ffi::Tensor>& state, float* logits) const;
  // One call of the prefill function on exactly manifest().chunk tokens (the bundle has one).
  std::vector<ffi::Tensor> PrefillChunk(const int64_t* tokens, const std::vector<ffi::Tensor>& state,
                                        float* logits) const;
  // State tensors (1, ...) holding `values` (state_size() floats, manifest order), and the reverse.
  std::vector<ffi::Tensor> StateOf(const float* values) const;
  void CopyState(const std::vector<ffi::Tensor>& state, float* values) const;

 private:
  std::vector<ffi::Tensor> Call(const ffi::Function& fn, const std::string& what, const ffi::Tensor& tokens,
                                const std::vector<ffi::Tensor>& state, const std::vector<int64_t>& logits_shape,
                                float* logits) const;
  std::vector<ffi::Tensor> CheckState(const ffi::Array<ffi::Any>& values, size_t first, const std::string& fn) const;
  void UseThreads() const;  // TVM's pool belongs to the calling thread: sized before each call there

  Weights params_;  // first: unmapped after the functions that use it are gone
  Manifest manifest_;
  size_t state_size_ = 0;
  int num_threads_ = 0;
  ffi::Function main_, initial_state_;
  ffi::Optional<ffi::Function> prefill_;
  mutable std::mutex mutex_;  // the VM runs one call at a time (sessions on several threads share it)
};

// One conversation on a model: the state and the logits after the last token fed.
class Session {
 public:
  explicit Session(const Model& model);

  void Reset();  // the model's initial state, no logits
  // Feeds tokens (ids checked: std::invalid_argument): whole chunks through the prefill function, the
  // rest by steps. The session is unchanged where anything fails.
  void Prefill(const int32_t* tokens, size_t count);
  void Step(int32_t token) { Prefill(&token, 1); }
  const float* logits() const { return has_logits_ ? logits_.data() : nullptr; }  // nullptr: none yet
  void GetState(float* values) const { model_.CopyState(state_, values); }
  // Replaces the state (state_size() floats) and the logits (vocab_size floats, or nullptr: none).
  void SetState(const float* values, const float* logits);
  const Model& model() const { return model_; }

 private:
  const Model& model_;
  std::vector<ffi::Tensor> state_;
  std::vector<float> logits_;
  bool has_logits_ = false;
};

// The model behind a handle of the C API (c_api.cc): for rwkv-edge-runner, which links the static
// library and times each call of the prefill function.
const Model& ModelOf(const rwkv_edge_model* model);

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_MODEL_H_
