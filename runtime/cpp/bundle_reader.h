// Opening a TVM bundle (model.so + params.safetensors + manifest.json) under the rules of the Python
// reader (artifact/reader.py, artifact/manifest.py, docs/artifacts.md), so that a board running the
// C++ runner alone trusts a bundle exactly as far as `rwkv-edge verify` would:
//
//   - manifest.json is a regular file (opened without following a symlink) of at most 16 MiB, and
//     hashes as --expect-sha256 says where the user pinned it;
//   - its schema is "rwkv-edge.artifact/2", its kind "tvm"; every listed file name is a plain relative
//     path inside the directory with a sha256 and a byte count; the graphs name listed files only;
//   - tokenizer_file, where present and not null, is one of the listed files;
//   - every listed file is reached without a symlink on any component of its path, is a regular file
//     of the listed size (all sizes first: a truncated copy fails at once) and then of the listed sha256.
//
// Nothing unlisted is opened. model.so is read into memory once and its sha256 taken over those
// bytes; LoadLibrary then loads exactly them, so a library swapped on disk after the check is never
// the one that runs. The tokenizer file is read once and hashed over the bytes kept. The params file is mapped and hashed through the mapping (a mapping is only as
// fixed as the file under it: docs/artifacts.md).
//
// Once the library is loaded, CheckInterface holds the manifest to what the library says of itself
// (its interface(), artifact/interface.py) and Weights holds the params file's header to the weights
// the library takes, so a tampered field is one clear line before any step runs.

#ifndef RWKV_EDGE_BUNDLE_READER_H_
#define RWKV_EDGE_BUNDLE_READER_H_

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace rwkv_edge {

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;

constexpr const char* kLibrary = "model.so";  // the linked library a CPU bundle runs

// A bundle (or a part of one) that fails a check: something the user can fix (copy it again,
// rebuild it), reported as one line.
struct BundleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A valid bundle this runtime does not run (an image model).
struct UnsupportedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------
// JSON, typed as strictly as Python's reader types it: an integer is never a boolean, nor the reverse.

// "object", "array", "string", "integer", "number", "boolean" or "null": for messages.
std::string JsonType(const json::Value& value);

// A field of a JSON object; BundleError "WHERE: no field 'KEY'" where it has none.
json::Value Field(const json::Object& obj, const char* key, const std::string& where);

// `value` as T where it holds exactly that JSON type; BundleError "WHAT has the wrong type (...)" otherwise.
template <typename T>
T As(const json::Value& value, const std::string& what) {
  std::optional<T> v = value.as<T>();
  if (!v.has_value()) throw BundleError(what + " has the wrong type (" + JsonType(value) + ")");
  return *v;
}

// ---------------------------------------------------------------------------------------------

struct ListedFile {
  std::string sha256;  // 64 lowercase hex digits
  int64_t bytes = 0;
};

struct StateSpec {
  std::string input;           // "state.3.wkv": the contract's name of the tensor
  std::string output;          // "state_out.3.wkv"
  std::vector<int64_t> shape;  // without the batch axis
};

// What a runtime needs of a validated manifest.
struct Manifest {
  std::string sha256;                       // of manifest.json's bytes: what --expect-sha256 pins
  std::map<std::string, ListedFile> files;  // every file of the bundle, by relative path
  std::string architecture;                 // "v7", ...
  std::string source_sha256;                // source.sha256: the checkpoint the bundle was made from
  std::string tokenizer;                    // "bytes", "world", "20b"; "none" for an image model
  std::string tokenizer_file;               // the listed file holding the tokenizer's vocabulary; empty: none
  int64_t vocab_size = 0;
  std::string triple;            // the LLVM target triple the library was compiled for
  std::vector<StateSpec> state;  // in the order of main's state inputs and outputs
  std::string params;            // the weights file main takes after the state; empty: none
  int64_t num_params = 0;
  std::string prefill;      // the prefill function's name; empty: none (prompts run by steps)
  int64_t chunk = 0;        // tokens per prefill call
  bool all_logits = false;  // prefill returns (1, chunk, V) logits, not (1, V)
};

// A tensor a library takes or returns: numpy's dtype name ("float32", "int64", ...) and its shape.
struct TensorSpec {
  std::string dtype;
  std::vector<int64_t> shape;
};

// A file mapped read-only (MAP_PRIVATE); unmapped when the object goes.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(int fd, size_t size, const std::string& path);  // BundleError where it cannot be mapped
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

// A bundle whose manifest was validated and whose listed files all matched it.
struct OpenedBundle {
  std::string dir;
  Manifest manifest;
  std::vector<uint8_t> library;  // model.so's bytes: exactly those whose sha256 matched
  MappedFile params;             // the manifest's params file, mapped; empty where it has none
  std::string vocabulary;        // the tokenizer file's bytes, exactly those hashed; empty where it has none
};

// Opens the bundle in `dir` as the header comment says; `expect_sha256` (64 lowercase hex digits, or
// empty: no pin) is the sha256 manifest.json must have. BundleError for anything that fails.
OpenedBundle OpenBundle(const std::string& dir, const std::string& expect_sha256);

// Parses a loaded library's interface() bytes (`text`; artifact/interface.py has the format) and holds
// the manifest to them as the Python reader does: the embedding's rows against config.vocab_size,
// main's and the prefill function's inputs and outputs against the state, graphs.prefill.chunk and
// graphs.prefill.all_logits, the number of weights against graphs.step.num_params. Returns the
// weights the functions take after their inputs. BundleError naming the field that disagrees.
std::vector<TensorSpec> CheckInterface(const Manifest& manifest, const std::string& text, const std::string& where);

// The weights of a params file (artifact/params.py): w0, w1, ... as views of its mapping, the header
// checked against the file's size and each weight's dtype and shape against what the library takes.
class Weights {
 public:
  Weights() = default;
  // Takes the mapping OpenBundle made (and hashed); BundleError for a file that is not such a params
  // file or holds other weights than `expected`.
  Weights(MappedFile file, const std::string& path, const std::vector<TensorSpec>& expected);
  const std::vector<ffi::Tensor>& tensors() const { return tensors_; }

 private:
  ffi::Tensor View(const std::string& path, const std::string& name, const json::Object& entry,
                   const TensorSpec& expected, size_t first, size_t* end);

  MappedFile file_;  // before the views: unmapped after they are gone
  std::vector<ffi::Tensor> tensors_;
};

// Loads `bytes` (an OpenedBundle's library) as a TVM module from a sealed in-memory copy: no file
// anyone can change between the hash and the load. `path` names the library in messages.
// std::runtime_error or ffi::Error where the system or TVM cannot load it.
ffi::Module LoadLibrary(std::vector<uint8_t> bytes, const std::string& path);

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_BUNDLE_READER_H_
