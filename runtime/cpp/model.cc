// The model and its sessions (model.h).

#include "model.h"

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>
#include <utility>

// TVM's own thread-pool controls, exported by libtvm_runtime.so (src/runtime/threading_backend.cc); the
// wheel ships no header declaring them.
namespace tvm::runtime::threading {
void SetMaxConcurrency(int value);  // the calling thread's cap on its pool's workers; 0: the default
void ResetThreadPool();             // remakes the calling thread's pool under its cap
}  // namespace tvm::runtime::threading

namespace rwkv_edge {

#if defined(__aarch64__) && defined(__ANDROID__)
const char* const kHostTriple = "aarch64-linux-android";
#elif defined(__aarch64__)
const char* const kHostTriple = "aarch64-linux-gnu";
#elif defined(__x86_64__)
const char* const kHostTriple = "x86_64-linux-gnu";
#else
#error "rwkv-edge runs on x86_64 and aarch64 only"
#endif

namespace {

constexpr int kPooledAllocator = 2;  // tvm::runtime::memory::AllocatorType::kPooled
constexpr int kAffinityBig = 1;      // tvm::runtime::threading::ThreadGroup::kBig
const DLDevice kCPU{kDLCPU, 0};
const DLDataType kF32{kDLFloat, 32, 1};
const DLDataType kI64{kDLInt, 64, 1};

// Host memory aligned as TVM's own allocator aligns it (compiled kernels may assume it).
struct AlignedAlloc {
  static constexpr size_t kAlign = 64;
  void AllocData(DLTensor* t) {
    size_t bytes = static_cast<size_t>(ffi::GetDataSize(*t));
    t->data = std::aligned_alloc(kAlign, (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Tensor Empty(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype, kCPU);
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return "(" + dims + (shape.size() == 1 ? ",)" : ")");
}

std::vector<int64_t> Batched(const std::vector<int64_t>& shape) {
  std::vector<int64_t> b = shape;
  b.insert(b.begin(), 1);
  return b;
}

// A CPU tensor of `dtype` with the shape given (checked), as a pointer to its first element.
template <typename T>
const T* Data(const ffi::Tensor& t, DLDataType dtype, const std::vector<int64_t>& shape, const std::string& what) {
  std::vector<int64_t> got(t.shape().begin(), t.shape().end());
  if (t.dtype().code != dtype.code || t.dtype().bits != dtype.bits || t.dtype().lanes != 1) {
    throw std::runtime_error(what + " has an unexpected dtype");
  }
  if (got != shape) throw std::runtime_error(what + " has shape " + ShapeText(got) + ", expected " + ShapeText(shape));
  if (t.device().device_type != kDLCPU) throw std::runtime_error(what + " is not on the CPU");
  if (!t.IsContiguous()) throw std::runtime_error(what + " is not contiguous");
  return reinterpret_cast<const T*>(static_cast<const char*>(t.data_ptr()) + t.byte_offset());
}

ffi::Function Get(const ffi::Module& mod, const char* name, const std::string& so_path) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(name);
  if (!f.has_value()) {
    throw BundleError(so_path + ": has no function '" + name + "' (not a Relax VM executable made by rwkv-edge compile?)");
  }
  return *f;
}

size_t Count(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

}  // namespace

Model::Model(OpenedBundle bundle, int num_threads) : manifest_(bundle.manifest), num_threads_(num_threads) {
  if (num_threads < 0) throw std::invalid_argument("num_threads must be >= 0, got " + std::to_string(num_threads));
  if (manifest_.triple != kHostTriple) {  // before any code of the bundle loads
    throw BundleError(bundle.dir + ": bundle compiled for " + manifest_.triple + "; this runtime runs " + kHostTriple +
                      " bundles (use the one built for " + manifest_.triple + ")");
  }
  for (const StateSpec& spec : manifest_.state) {
    for (int64_t d : spec.shape) {
      if (d < 0) throw BundleError(bundle.dir + ": state " + spec.input + " has a negative dimension");
    }
    state_size_ += Count(spec.shape);
  }
  const std::string so_path = bundle.dir + "/" + kLibrary;
  ffi::Module lib = LoadLibrary(std::move(bundle.library), so_path);
  ffi::Module vm = Get(lib, "vm_load_executable", so_path)().cast<ffi::Module>();
  Get(vm, "vm_initialization", so_path)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  // What the library says it takes, before anything else runs: the manifest and the weights are held
  // to it (the token range, the state, the prefill chunk, every weight's dtype and shape).
  ffi::Optional<ffi::Function> interface = vm->GetFunction("interface");
  if (!interface.has_value()) {
    throw BundleError(so_path + ": built by an older rwkv-edge (no interface() function): recompile it");
  }
  auto text = (*interface)().cast<ffi::Tensor>();
  const uint8_t* bytes = Data<uint8_t>(text, DLDataType{kDLUInt, 8, 1}, {text.numel()}, "interface()");
  std::vector<TensorSpec> weights = CheckInterface(manifest_, std::string(bytes, bytes + text.numel()), so_path);
  if (!manifest_.params.empty()) {
    params_ = Weights(std::move(bundle.params), bundle.dir + "/" + manifest_.params, weights);
  }
  main_ = Get(vm, "main", so_path);
  if (!manifest_.prefill.empty()) prefill_ = Get(vm, manifest_.prefill.c_str(), so_path);
  initial_state_ = Get(vm, "initial_state", so_path);
}

void Model::UseThreads() const {
  thread_local int configured = 0;  // what this thread's pool was last sized to by a model; 0: untouched
  if (num_threads_ == 0 || configured == num_threads_) return;
  std::optional<ffi::Function> config = ffi::Function::GetGlobal("runtime.config_threadpool");
  if (!config.has_value()) throw std::runtime_error("the TVM runtime has no runtime.config_threadpool");
  // A pool never grows past the cap it was made with (TVM_NUM_THREADS, else half the cores on x86-64):
  // raise this thread's cap and remake its pool first, so that more threads than the default take effect.
  tvm::runtime::threading::SetMaxConcurrency(num_threads_);
  tvm::runtime::threading::ResetThreadPool();
  (*config)(kAffinityBig, num_threads_);  // (affinity mode, threads): the fastest cores first
  configured = num_threads_;
}

std::vector<ffi::Tensor> Model::InitialState() const {
  std::lock_guard<std::mutex> lock(mutex_);
  UseThreads();
  return CheckState(initial_state_().cast<ffi::Array<ffi::Any>>(), 0, "initial_state()");
}

std::vector<ffi::Tensor> Model::Step(int64_t token, const std::vector<ffi::Tensor>& state, float* logits) const {
  ffi::Tensor input = Empty({1}, kI64);
  static_cast<int64_t*>(input.data_ptr())[0] = token;
  return Call(main_, "main()", input, state, {1, manifest_.vocab_size}, logits);
}

std::vector<ffi::Tensor> Model::PrefillChunk(const int64_t* tokens, const std::vector<ffi::Tensor>& state,
                                             float* logits) const {
  ffi::Tensor input = Empty({1, manifest_.chunk}, kI64);
  std::memcpy(input.data_ptr(), tokens, static_cast<size_t>(manifest_.chunk) * sizeof(int64_t));
  std::vector<int64_t> shape = {1, manifest_.vocab_size};
  if (manifest_.all_logits) shape.insert(shape.begin() + 1, manifest_.chunk);  // (1, chunk, V): the last row is ours
  return Call(*prefill_, manifest_.prefill + "()", input, state, shape, logits);
}

std::vector<ffi::Tensor> Model::StateOf(const float* values) const {
  std::vector<ffi::Tensor> state;
  for (const StateSpec& spec : manifest_.state) {
    ffi::Tensor t = Empty(Batched(spec.shape), kF32);
    const size_t n = Count(spec.shape);
    std::memcpy(t.data_ptr(), values, n * sizeof(float));
    values += n;
    state.push_back(t);
  }
  return state;
}

void Model::CopyState(const std::vector<ffi::Tensor>& state, float* values) const {
  for (size_t i = 0; i < state.size(); ++i) {
    const StateSpec& spec = manifest_.state[i];
    const size_t n = Count(spec.shape);
    std::memcpy(values, Data<float>(state[i], kF32, Batched(spec.shape), spec.output), n * sizeof(float));
    values += n;
  }
}

// fn(tokens, state..., weights...) -> (logits of `logits_shape`, state'...): the last row of the
// logits copied to `logits`, the new state returned.
std::vector<ffi::Tensor> Model::Call(const ffi::Function& fn, const std::string& what, const ffi::Tensor& tokens,
                                     const std::vector<ffi::Tensor>& state, const std::vector<int64_t>& logits_shape,
                                     float* logits) const {
  std::vector<ffi::AnyView> args;
  args.reserve(1 + state.size() + params_.tensors().size());
  args.emplace_back(tokens);
  for (const ffi::Tensor& t : state) args.emplace_back(t);
  for (const ffi::Tensor& t : params_.tensors()) args.emplace_back(t);
  ffi::Any ret;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    UseThreads();
    fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
  }
  auto outputs = ret.cast<ffi::Array<ffi::Any>>();
  if (outputs.size() != 1 + manifest_.state.size()) {
    throw std::runtime_error(what + " returned " + std::to_string(outputs.size()) + " outputs, expected " +
                             std::to_string(1 + manifest_.state.size()) + " (logits and the state)");
  }
  auto out = outputs[0].cast<ffi::Tensor>();
  const float* src = Data<float>(out, kF32, logits_shape, what + " logits");
  const size_t V = static_cast<size_t>(manifest_.vocab_size);
  std::memcpy(logits, src + (out.numel() - V), V * sizeof(float));
  return CheckState(outputs, 1, what);
}

std::vector<ffi::Tensor> Model::CheckState(const ffi::Array<ffi::Any>& values, size_t first, const std::string& fn) const {
  if (values.size() != first + manifest_.state.size()) {
    throw std::runtime_error(fn + " returned " + std::to_string(values.size() - first) +
                             " state tensors; the manifest lists " + std::to_string(manifest_.state.size()));
  }
  std::vector<ffi::Tensor> state;
  for (size_t i = 0; i < manifest_.state.size(); ++i) {
    auto t = values[first + i].cast<ffi::Tensor>();
    Data<float>(t, kF32, Batched(manifest_.state[i].shape), fn + " " + manifest_.state[i].output);
    state.push_back(t);
  }
  return state;
}

// ---------------------------------------------------------------------------------------------

Session::Session(const Model& model)
    : model_(model), state_(model.InitialState()), logits_(static_cast<size_t>(model.manifest().vocab_size)) {}

void Session::Reset() {
  state_ = model_.InitialState();
  has_logits_ = false;
}

void Session::Prefill(const int32_t* tokens, size_t count) {
  const Manifest& m = model_.manifest();
  if (count == 0) throw std::invalid_argument("no tokens to feed");
  for (size_t i = 0; i < count; ++i) {  // the compiled embedding lookup does not check
    if (tokens[i] < 0 || tokens[i] >= m.vocab_size) {
      throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " (position " + std::to_string(i) +
                                  ") is outside the vocabulary [0, " + std::to_string(m.vocab_size) + ")");
    }
  }
  std::vector<float> logits(logits_.size());
  std::vector<ffi::Tensor> state = state_;
  const size_t chunk = m.prefill.empty() ? 0 : static_cast<size_t>(m.chunk);
  size_t done = 0;
  if (chunk > 0) {
    std::vector<int64_t> ids(chunk);
    for (; done + chunk <= count; done += chunk) {
      std::copy(tokens + done, tokens + done + chunk, ids.begin());
      state = model_.PrefillChunk(ids.data(), state, logits.data());
    }
  }
  for (; done < count; ++done) state = model_.Step(tokens[done], state, logits.data());
  state_ = std::move(state);
  logits_ = std::move(logits);
  has_logits_ = true;
}

void Session::SetState(const float* values, const float* logits) {
  std::vector<ffi::Tensor> state = model_.StateOf(values);
  if (logits != nullptr) std::copy(logits, logits + logits_.size(), logits_.begin());
  state_ = std::move(state);
  has_logits_ = logits != nullptr;
}

}  // namespace rwkv_edge
