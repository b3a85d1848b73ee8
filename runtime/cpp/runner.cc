// rwkv-edge-runner: run an rwkv-edge TVM bundle (model.so + manifest.json) one token at a time, or
// a prompt through its prefill function.
//
//   rwkv-edge-runner BUNDLE_DIR --tokens 1,2,3 [--prefill] [--out OUTDIR] [--state-in DIR] [--repeat K]
//                    [--expect-sha256 HEX]
//
// Checks the bundle first, as the Python reader does (bundle_reader.h: the manifest validated, every
// listed file's size and sha256; with --expect-sha256, the manifest's own sha256), then loads the
// very bytes of model.so it hashed (a Relax VM executable), maps its weights (the manifest's params
// file, params.safetensors: every tensor 64-byte aligned, passed to the library as views of the
// mapping, never copied), takes the state before the first token from its `initial_state()`
// function (or from DIR/state_{i}.npy with --state-in), feeds the tokens through
// `main(token, state..., weights...) -> (logits, state'...)`, each step on the state the last one
// returned, and writes into OUTDIR (default: the current directory)
//   logits.npy   (T, V) float32, the logits after each token
//   state_{i}.npy the final state tensors in manifest order, shaped as the model returns them
//   step_ms.npy  (T + K,) float64, the time of each call to `main`
// --prefill feeds the tokens as a prompt, as the Python TvmBackend does: whole chunks of the
// bundle's chunk size C through `prefill(tokens (1, C), state..., weights...)`, the rest through
// `main` (all of them where the bundle has no prefill function); logits.npy then holds (1, V), the
// logits after the last token, and step_ms.npy one time per call (prefill calls, then steps).
// --repeat K times K more greedy decode steps after the rollout (they change none of the files
// above except step_ms.npy). Needs only libtvm_runtime.so and libtvm_ffi.so, and only the
// tvm-ffi headers (the apache-tvm wheel's tvm/include lacks headers that tvm/runtime/*.h include).
// Exit status: 0 done, 1 TVM failed to load or run the model, 2 bad arguments, bundle (a tampered or
// partly copied one included) or input; every error is one line on stderr.

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include "bundle_reader.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;
using rwkv_edge::As;
using rwkv_edge::BundleError;
using rwkv_edge::Field;
using rwkv_edge::Manifest;
using rwkv_edge::StateSpec;

constexpr int kExitRuntime = 1;  // TVM failed while loading or running the model
constexpr int kExitInput = 2;    // bad arguments, bundle or input: the user can fix it
constexpr int kPooledAllocator = 2;  // tvm::runtime::memory::AllocatorType::kPooled

// The target triple of the bundles this build runs: the first field names the architecture.
#if defined(__aarch64__) && defined(__ANDROID__)
constexpr const char* kHostTriple = "aarch64-linux-android";
#elif defined(__aarch64__)
constexpr const char* kHostTriple = "aarch64-linux-gnu";
#elif defined(__x86_64__)
constexpr const char* kHostTriple = "x86_64-linux-gnu";
#else
#error "rwkv-edge-runner is built for x86_64 and aarch64 only"
#endif

// A mistake the user can fix (exit 2), as a BundleError is; everything else that goes wrong is a
// runtime failure (exit 1).
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string bundle;
  std::string out = ".";
  std::string state_in;  // a directory of state_{i}.npy; empty: initial_state()
  std::vector<int64_t> tokens;
  int repeat = 0;
  bool prefill = false;  // the tokens are a prompt: whole chunks through `prefill`, the rest by steps
  std::string expect_sha256;  // the sha256 manifest.json must have (lowercase); empty: not pinned
};

// ---------------------------------------------------------------------------------------------
// command line

const char* kUsage =
    "usage: rwkv-edge-runner BUNDLE_DIR --tokens ID[,ID...] [--prefill] [--out OUTDIR] [--state-in DIR] [--repeat K] "
    "[--expect-sha256 HEX]";

int64_t ParseInt(const std::string& text, const std::string& what) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size()) throw InputError(what + ": not an integer: '" + text + "'");
  return value;
}

// The 64 hex digits of a sha256 (either case), lowercased as the reader compares them.
std::string ParseSha256(const std::string& text) {
  if (text.size() != 64 || text.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
    throw InputError("--expect-sha256: expected the 64 hex digits of a sha256, got '" + text + "'");
  }
  std::string lower = text;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  bool have_tokens = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw InputError(arg + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (arg == "--tokens") {
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) opt.tokens.push_back(ParseInt(item, "--tokens"));
      have_tokens = true;
    } else if (arg == "--prefill") {
      opt.prefill = true;
    } else if (arg == "--out") {
      opt.out = value();
    } else if (arg == "--state-in") {
      opt.state_in = value();
    } else if (arg == "--repeat") {
      int64_t k = ParseInt(value(), "--repeat");
      if (k < 0 || k > 1000000) throw InputError("--repeat must be in [0, 1000000], got " + std::to_string(k));
      opt.repeat = static_cast<int>(k);
    } else if (arg == "--expect-sha256") {
      opt.expect_sha256 = ParseSha256(value());
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kUsage << "\n";
      std::exit(0);
    } else if (!arg.empty() && arg[0] == '-') {
      throw InputError("unknown option " + arg + "; " + kUsage);
    } else if (opt.bundle.empty()) {
      opt.bundle = arg;
    } else {
      throw InputError("unexpected argument '" + arg + "'; " + kUsage);
    }
  }
  if (opt.bundle.empty()) throw InputError(std::string("no bundle directory given; ") + kUsage);
  if (!have_tokens || opt.tokens.empty()) throw InputError(std::string("no tokens given; ") + kUsage);
  return opt;
}

// ---------------------------------------------------------------------------------------------
// the bundle (bundle_reader.h opens and checks it)

void CheckTriple(const Manifest& manifest, const std::string& dir) {
  if (manifest.triple != kHostTriple) {
    throw InputError(dir + ": bundle compiled for " + manifest.triple + "; this runner runs " + kHostTriple +
                     " bundles (use the runner built for " + manifest.triple + ")");
  }
}

// ---------------------------------------------------------------------------------------------
// NPY v1.0 files (little-endian, C order)

std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(path + ": cannot be read");
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return "(" + dims + (shape.size() == 1 ? ",)" : ")");  // Python's tuple syntax, as NPY headers want
}

// Write to PATH.partial, then rename: an interrupted run leaves no half-written .npy behind.
void WriteNpy(const std::string& path, const char* descr, const void* data, size_t nbytes,
              const std::vector<int64_t>& shape) {
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + ShapeText(shape) + ", }";
  size_t total = 10 + header.size() + 1;  // magic + version + length, the dict, '\n'
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw InputError(path + ": cannot be written");
    uint16_t len = static_cast<uint16_t>(header.size());
    const char magic[] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
    char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    f.write(magic, sizeof(magic));
    f.write(len_le, 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
    if (!f) throw InputError(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw InputError(path + ": cannot be renamed into place");
}

// A float32 C-order array; its shape must hold `want` (shape without the batch axis) with or
// without a leading batch axis of 1.
std::vector<float> ReadNpyF32(const std::string& path, const std::vector<int64_t>& want) {
  size_t count = 1;
  for (int64_t d : want) count *= static_cast<size_t>(d);
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > count * sizeof(float) + (1u << 20)) {  // read nothing larger than a header and the data
    throw InputError(path + ": " + std::to_string(size) + " bytes, more than a state tensor of shape " +
                     ShapeText(want) + " takes");
  }
  std::string text = ReadText(path);
  if (text.size() < 10 || text.compare(0, 6, "\x93NUMPY") != 0) throw InputError(path + ": not an NPY file");
  int major = static_cast<unsigned char>(text[6]);
  size_t len = 0, start = 0;
  if (major == 1) {
    len = static_cast<unsigned char>(text[8]) | static_cast<unsigned char>(text[9]) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (text.size() < 12) throw InputError(path + ": truncated NPY header");
    for (int b = 3; b >= 0; --b) len = len << 8 | static_cast<unsigned char>(text[8 + b]);
    start = 12;
  } else {
    throw InputError(path + ": NPY version " + std::to_string(major) + " is not supported");
  }
  if (text.size() < start + len) throw InputError(path + ": truncated NPY header");
  std::string header = text.substr(start, len);
  auto has = [&](const char* s) { return header.find(s) != std::string::npos; };
  if (!has("'descr': '<f4'") || !has("'fortran_order': False")) {
    throw InputError(path + ": expected a float32 C-order array (header " + header.substr(0, header.find('}') + 1) + ")");
  }
  size_t open = header.find('(', header.find("'shape'"));
  size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) throw InputError(path + ": NPY header without a shape");
  std::vector<int64_t> shape;
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  for (std::string d; std::getline(dims, d, ',');) {
    d.erase(std::remove(d.begin(), d.end(), ' '), d.end());
    if (!d.empty()) shape.push_back(ParseInt(d, path + ": shape"));
  }
  std::vector<int64_t> batched = want;
  batched.insert(batched.begin(), 1);
  if (shape != want && shape != batched) {
    throw InputError(path + ": shape " + ShapeText(shape) + ", expected " + ShapeText(batched));
  }
  if (text.size() != start + len + count * sizeof(float)) throw InputError(path + ": data size does not match its shape");
  std::vector<float> data(count);
  std::memcpy(data.data(), text.data() + start + len, count * sizeof(float));
  return data;
}

// ---------------------------------------------------------------------------------------------
// the model

const DLDevice kCPU{kDLCPU, 0};

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

std::vector<int64_t> Batched(const std::vector<int64_t>& shape) {
  std::vector<int64_t> b = shape;
  b.insert(b.begin(), 1);
  return b;
}

class Model {
 public:
  // Takes what OpenBundle checked: the library's bytes and the mapped weights.
  explicit Model(rwkv_edge::OpenedBundle bundle)
      : manifest_(bundle.manifest),
        token_(Empty({1}, DLDataType{kDLInt, 64, 1})),
        chunk_(Empty({1, std::max<int64_t>(manifest_.chunk, 1)}, DLDataType{kDLInt, 64, 1})) {
    const std::string so_path = bundle.dir + "/" + rwkv_edge::kLibrary;
    ffi::Module lib = rwkv_edge::LoadLibrary(std::move(bundle.library), so_path);
    ffi::Module vm = Get(lib, "vm_load_executable", so_path)().cast<ffi::Module>();
    Get(vm, "vm_initialization", so_path)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    // What the library says it takes, before anything else runs: the manifest and the weights are held
    // to it (the token range, the state, the prefill chunk, every weight's dtype and shape).
    ffi::Optional<ffi::Function> interface = vm->GetFunction("interface");
    if (!interface.has_value()) {
      throw InputError(so_path + ": built by an older rwkv-edge (no interface() function): recompile it");
    }
    auto text = (*interface)().cast<ffi::Tensor>();
    const uint8_t* bytes = Data<uint8_t>(text, DLDataType{kDLUInt, 8, 1}, {text.numel()}, "interface()");
    std::vector<rwkv_edge::TensorSpec> weights =
        rwkv_edge::CheckInterface(manifest_, std::string(bytes, bytes + text.numel()), so_path);
    if (!manifest_.params.empty()) {
      params_ = rwkv_edge::Weights(std::move(bundle.params), bundle.dir + "/" + manifest_.params, weights);
    }
    main_ = Get(vm, "main", so_path);
    if (!manifest_.prefill.empty()) prefill_ = Get(vm, manifest_.prefill.c_str(), so_path);
    initial_state_ = Get(vm, "initial_state", so_path);
  }

  std::vector<ffi::Tensor> InitialState() const { return CheckState(initial_state_().cast<ffi::Array<ffi::Any>>(), 0, "initial_state()"); }

  // One step: writes the logits (V floats) and returns the new state.
  std::vector<ffi::Tensor> Step(int64_t token, const std::vector<ffi::Tensor>& state, float* logits) {
    static_cast<int64_t*>(token_.data_ptr())[0] = token;
    return Call(main_, "main()", token_, state, {1, manifest_.vocab_size}, logits);
  }

  // One call of the prefill function on exactly `chunk` tokens: writes the logits after the last
  // of them (V floats) and returns the new state.
  std::vector<ffi::Tensor> Prefill(const int64_t* tokens, const std::vector<ffi::Tensor>& state, float* logits) {
    std::memcpy(chunk_.data_ptr(), tokens, static_cast<size_t>(manifest_.chunk) * sizeof(int64_t));
    std::vector<int64_t> shape = {1, manifest_.vocab_size};
    if (manifest_.all_logits) shape.insert(shape.begin() + 1, manifest_.chunk);  // (1, chunk, V): the last row is ours
    return Call(*prefill_, manifest_.prefill + "()", chunk_, state, shape, logits);
  }

  // The state read from DIR/state_{i}.npy, in manifest order.
  std::vector<ffi::Tensor> LoadState(const std::string& dir) const {
    std::vector<ffi::Tensor> state;
    for (size_t i = 0; i < manifest_.state.size(); ++i) {
      const StateSpec& spec = manifest_.state[i];
      std::vector<float> data = ReadNpyF32(dir + "/state_" + std::to_string(i) + ".npy", spec.shape);
      ffi::Tensor t = Empty(Batched(spec.shape), DLDataType{kDLFloat, 32, 1});
      std::memcpy(t.data_ptr(), data.data(), data.size() * sizeof(float));
      state.push_back(t);
    }
    return state;
  }

 private:
  // fn(tokens, state..., weights...) -> (logits of `logits_shape`, state'...): the last row of the
  // logits copied to `logits`, the new state returned.
  std::vector<ffi::Tensor> Call(const ffi::Function& fn, const std::string& what, const ffi::Tensor& tokens,
                                const std::vector<ffi::Tensor>& state, const std::vector<int64_t>& logits_shape,
                                float* logits) {
    std::vector<ffi::AnyView> args;
    args.reserve(1 + state.size() + params_.tensors().size());
    args.emplace_back(tokens);
    for (const ffi::Tensor& t : state) args.emplace_back(t);
    for (const ffi::Tensor& t : params_.tensors()) args.emplace_back(t);
    ffi::Any ret;
    fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
    auto outputs = ret.cast<ffi::Array<ffi::Any>>();
    if (outputs.size() != 1 + manifest_.state.size()) {
      throw std::runtime_error(what + " returned " + std::to_string(outputs.size()) + " outputs, expected " +
                               std::to_string(1 + manifest_.state.size()) + " (logits and the state)");
    }
    auto out = outputs[0].cast<ffi::Tensor>();
    const float* src = Data<float>(out, DLDataType{kDLFloat, 32, 1}, logits_shape, what + " logits");
    const size_t V = static_cast<size_t>(manifest_.vocab_size);
    std::memcpy(logits, src + (out.numel() - V), V * sizeof(float));
    return CheckState(outputs, 1, what);
  }

  static ffi::Function Get(const ffi::Module& mod, const char* name, const std::string& so_path) {
    ffi::Optional<ffi::Function> f = mod->GetFunction(name);
    if (!f.has_value()) {
      throw InputError(so_path + ": has no function '" + name + "' (not a Relax VM executable made by rwkv-edge compile?)");
    }
    return *f;
  }

  std::vector<ffi::Tensor> CheckState(const ffi::Array<ffi::Any>& values, size_t first, const std::string& fn) const {
    if (values.size() != first + manifest_.state.size()) {
      throw std::runtime_error(fn + " returned " + std::to_string(values.size() - first) + " state tensors; the manifest lists " +
                               std::to_string(manifest_.state.size()));
    }
    std::vector<ffi::Tensor> state;
    for (size_t i = 0; i < manifest_.state.size(); ++i) {
      auto t = values[first + i].cast<ffi::Tensor>();
      Data<float>(t, DLDataType{kDLFloat, 32, 1}, Batched(manifest_.state[i].shape), fn + " " + manifest_.state[i].output);
      state.push_back(t);
    }
    return state;
  }

  rwkv_edge::Weights params_;  // first: unmapped after the functions that use it are gone
  Manifest manifest_;
  ffi::Tensor token_, chunk_;  // main's token (1,), prefill's tokens (1, chunk)
  ffi::Function main_, initial_state_;
  ffi::Optional<ffi::Function> prefill_;
};

// ---------------------------------------------------------------------------------------------

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int64_t ArgMax(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

int Run(const Options& opt) {
  rwkv_edge::OpenedBundle bundle = rwkv_edge::OpenBundle(opt.bundle, opt.expect_sha256);
  const Manifest manifest = bundle.manifest;
  CheckTriple(manifest, opt.bundle);  // before any code of the bundle loads
  Model model(std::move(bundle));     // holds the manifest to the library's interface()
  for (size_t i = 0; i < opt.tokens.size(); ++i) {
    int64_t t = opt.tokens[i];
    if (t < 0 || t >= manifest.vocab_size) {  // the compiled embedding lookup does not check
      throw InputError("token id " + std::to_string(t) + " (position " + std::to_string(i) + ") is outside the vocabulary [0, " +
                       std::to_string(manifest.vocab_size) + ")");
    }
  }
  std::vector<ffi::Tensor> state = opt.state_in.empty() ? model.InitialState() : model.LoadState(opt.state_in);

  const int64_t V = manifest.vocab_size, T = static_cast<int64_t>(opt.tokens.size());
  // --prefill: whole chunks through prefill, the rest by steps, one row of logits (after the last token)
  const int64_t chunks = opt.prefill && manifest.chunk ? T / manifest.chunk : 0;
  const int64_t rows = opt.prefill ? 1 : T;
  std::vector<float> logits(static_cast<size_t>(rows * V));
  std::vector<double> step_ms;
  using Clock = std::chrono::steady_clock;
  for (int64_t c = 0; c < chunks; ++c) {
    auto t0 = Clock::now();
    state = model.Prefill(opt.tokens.data() + c * manifest.chunk, state, logits.data());
    step_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    int64_t top = ArgMax(logits.data(), V);
    std::printf("prefill %lld: tokens %lld..%lld -> top-1 %lld (%.4f)  %.3f ms\n", static_cast<long long>(c),
                static_cast<long long>(c * manifest.chunk), static_cast<long long>((c + 1) * manifest.chunk - 1),
                static_cast<long long>(top), logits[top], step_ms.back());
  }
  for (int64_t i = chunks * manifest.chunk; i < T; ++i) {
    float* row = logits.data() + (opt.prefill ? 0 : i * V);
    auto t0 = Clock::now();
    state = model.Step(opt.tokens[i], state, row);
    step_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    int64_t top = ArgMax(row, V);
    std::printf("step %lld: token %lld -> top-1 %lld (%.4f)  %.3f ms\n", static_cast<long long>(i),
                static_cast<long long>(opt.tokens[i]), static_cast<long long>(top), row[top], step_ms.back());
  }

  std::error_code ec;
  std::filesystem::create_directories(opt.out, ec);
  if (ec) throw InputError(opt.out + ": cannot create the output directory (" + ec.message() + ")");
  WriteNpy(opt.out + "/logits.npy", "<f4", logits.data(), logits.size() * sizeof(float), {rows, V});
  for (size_t i = 0; i < state.size(); ++i) {
    const ffi::Tensor& t = state[i];
    std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
    const float* data = Data<float>(t, DLDataType{kDLFloat, 32, 1}, shape, manifest.state[i].output);
    WriteNpy(opt.out + "/state_" + std::to_string(i) + ".npy", "<f4", data, t.numel() * sizeof(float), shape);
  }

  std::vector<float> scratch(static_cast<size_t>(V));
  int64_t token = ArgMax(logits.data() + (rows - 1) * V, V);
  std::vector<double> decode_ms;
  for (int k = 0; k < opt.repeat; ++k) {  // greedy decode from the final state, timed only
    auto t0 = Clock::now();
    state = model.Step(token, state, scratch.data());
    decode_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    token = ArgMax(scratch.data(), V);
  }
  std::vector<double> all_ms = step_ms;
  all_ms.insert(all_ms.end(), decode_ms.begin(), decode_ms.end());
  WriteNpy(opt.out + "/step_ms.npy", "<f8", all_ms.data(), all_ms.size() * sizeof(double), {static_cast<int64_t>(all_ms.size())});

  bool timed_decode = !decode_ms.empty();
  if (opt.prefill) {
    double prompt_ms = 0;
    for (double ms : step_ms) prompt_ms += ms;
    std::printf("prompt: %lld tokens in %lld prefill calls of %lld and %lld steps, %.3f ms (%.1f tokens/s)\n",
                static_cast<long long>(T), static_cast<long long>(chunks), static_cast<long long>(manifest.chunk),
                static_cast<long long>(T - chunks * manifest.chunk), prompt_ms, T / prompt_ms * 1e3);
  }
  std::printf("done: %lld steps, vocab %lld, %zu state tensors, %s; median step %.3f ms over %zu %s\n",
              static_cast<long long>(T - chunks * manifest.chunk), static_cast<long long>(V), state.size(), kHostTriple,
              Median(timed_decode ? decode_ms : step_ms), timed_decode ? decode_ms.size() : step_ms.size(),
              timed_decode ? "decode steps after the rollout" : "rollout calls (the first includes warm-up)");
  return 0;
}

// The first line of a message: errors are one line on stderr.
std::string FirstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const InputError& e) {
    std::fprintf(stderr, "rwkv-edge-runner: error: %s\n", FirstLine(e.what()).c_str());
    return kExitInput;
  } catch (const BundleError& e) {
    std::fprintf(stderr, "rwkv-edge-runner: error: %s\n", FirstLine(e.what()).c_str());
    return kExitInput;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "rwkv-edge-runner: TVM error: %s: %s\n", e.kind().c_str(), FirstLine(e.message()).c_str());
    return kExitRuntime;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rwkv-edge-runner: error: %s\n", FirstLine(e.what()).c_str());
    return kExitRuntime;
  }
}
