// The bundle reader (bundle_reader.h): the Python reader's rules, in the order it applies them.

#include "bundle_reader.h"

#include "sha256.h"

#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>
#include <utility>

namespace rwkv_edge {
namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kSchema = "rwkv-edge.artifact/2";
constexpr const char* kReports[] = {"parity.json", "parity.png"};  // verify writes them beside a bundle
constexpr size_t kMaxManifestBytes = 16u << 20;
constexpr size_t kMaxFiles = 100000;
constexpr int64_t kMaxChunk = 4096;  // contract.py MAX_CHUNK: tokens per prefill call
constexpr size_t kMaxInterfaceBytes = 16u << 20;
constexpr const char* kInterfaceFormat = "rwkv-edge interface";
constexpr size_t kParamsAlign = 64;  // TVM's kAllocAlignment: every weight starts on it
constexpr uint64_t kMaxParamsHeader = 16u << 20;
constexpr const char* kParamsFormat = "rwkv-edge params";
constexpr size_t kMaxNameChars = 1024;
constexpr size_t kReadChunk = 1u << 20;
// MFD_EXEC (Linux 6.3), which older headers lack: with vm.memfd_noexec=1 a memfd made without it
// cannot be mapped executable, so dlopen would fail on it.
constexpr unsigned kMfdExec = 0x0010U;

std::string Errno() { return std::strerror(errno); }

// A file descriptor, closed when it goes.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// `text` in single quotes, control characters escaped: a name from a manifest may hold anything,
// and an error stays one line.
std::string Quoted(const std::string& text) {
  std::string out = "'";
  for (unsigned char c : text) {
    if (c == '\'' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

// ---------------------------------------------------------------------------------------------
// reading files

// Reads until `size` bytes or the end of the file; returns how many it read.
size_t ReadUpTo(int fd, char* out, size_t size, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = read(fd, out + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw BundleError(path + ": cannot be read (" + Errno() + ")");
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

std::string SizeMismatch(const std::string& path, int64_t size, int64_t listed) {
  return path + ": " + std::to_string(size) + " bytes, the manifest says " + std::to_string(listed) +
         " (modified or partly written)";
}

Fd OpenDirectory(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw BundleError(dir + ": not a directory; create a TVM bundle with `rwkv-edge compile`");
  return Fd(fd);
}

// manifest.json's bytes: a regular file (not a symlink) of at most kMaxManifestBytes.
std::string ReadManifestBytes(int dir_fd, const std::string& dir) {
  const std::string path = dir + "/" + kManifest;
  // O_NONBLOCK: a FIFO in its place fails the regular-file check instead of blocking the open.
  int fd = openat(dir_fd, kManifest, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    throw BundleError(dir + ": no manifest.json (not an rwkv-edge bundle); create one with `rwkv-edge compile`");
  }
  if (fd < 0 && errno == ELOOP) throw BundleError(path + ": not a regular file (a symbolic link)");
  if (fd < 0) throw BundleError(path + ": cannot be opened (" + Errno() + ")");
  Fd owner(fd);
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) throw BundleError(path + ": not a regular file");
  auto too_large = [&](size_t size) {
    return BundleError(path + ": " + std::to_string(size) + " bytes, more than a manifest can hold");
  };
  if (static_cast<size_t>(st.st_size) > kMaxManifestBytes) throw too_large(st.st_size);
  std::string data;
  std::vector<char> chunk(kReadChunk);
  for (size_t n; (n = ReadUpTo(fd, chunk.data(), chunk.size(), path)) > 0;) {  // to the end: it may have grown
    data.append(chunk.data(), n);
    if (data.size() > kMaxManifestBytes) throw too_large(data.size());
  }
  return data;
}

// Opens the listed file `name` one component at a time, none of them followed where it is a symlink:
// whatever is renamed meanwhile, the file opened is inside the directory. Fills `st` with its fstat.
Fd OpenListed(int dir_fd, const std::string& dir, const std::string& name, struct stat* st) {
  Fd parent;
  int at = dir_fd;
  for (size_t start = 0;;) {
    const size_t slash = name.find('/', start);
    const bool last = slash == std::string::npos;
    const std::string part = name.substr(start, last ? std::string::npos : slash - start);
    const std::string shown = dir + "/" + name.substr(0, slash);
    // Not O_DIRECTORY: with it, a symlink to a folder fails as "not a directory", not as a symlink.
    int fd = openat(at, part.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) throw BundleError(dir + ": " + name + ", listed in the manifest, is missing");
    if (fd < 0 && errno == ELOOP) throw BundleError(shown + ": a symbolic link; bundles hold regular files only");
    if (fd < 0) throw BundleError(shown + ": cannot be opened (" + Errno() + ")");
    Fd opened(fd);
    if (fstat(fd, st) != 0) throw BundleError(shown + ": cannot be read (" + Errno() + ")");
    if (last) {
      if (!S_ISREG(st->st_mode)) throw BundleError(shown + ": not a regular file");
      return opened;
    }
    if (!S_ISDIR(st->st_mode)) throw BundleError(shown + ": not a regular directory");
    parent = std::move(opened);
    at = parent.get();
    start = slash + 1;
  }
}

// Opens a listed file and checks its size against the manifest's.
Fd OpenListedOfSize(int dir_fd, const std::string& dir, const std::string& name, const ListedFile& listed) {
  struct stat st {};
  Fd fd = OpenListed(dir_fd, dir, name, &st);
  if (st.st_size != listed.bytes) {
    throw BundleError(SizeMismatch(dir + "/" + name, st.st_size, listed.bytes));
  }
  return fd;
}

std::string HashStream(int fd, const std::string& path) {
  Sha256 h;
  std::vector<char> buffer(kReadChunk);
  for (size_t n; (n = ReadUpTo(fd, buffer.data(), buffer.size(), path)) > 0;) h.Update(buffer.data(), n);
  return h.HexDigest();
}

std::vector<uint8_t> ReadExactly(int fd, const ListedFile& listed, const std::string& path) {
  std::vector<uint8_t> bytes(static_cast<size_t>(listed.bytes));
  size_t got = ReadUpTo(fd, reinterpret_cast<char*>(bytes.data()), bytes.size(), path);
  if (got != bytes.size()) throw BundleError(SizeMismatch(path, static_cast<int64_t>(got), listed.bytes));
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// manifest.json's fields

// Whether `name` is a plain relative path that stays inside the directory (artifact/manifest.py safe_name).
bool SafeName(const std::string& name) {
  size_t chars = 0;  // Python counts characters: UTF-8 continuation bytes are not ones
  for (unsigned char c : name) chars += (c & 0xc0) != 0x80;
  if (name.empty() || chars > kMaxNameChars || name.find('\\') != std::string::npos ||
      name.find('\0') != std::string::npos || name[0] == '/') {
    return false;
  }
  for (size_t start = 0; start <= name.size();) {
    size_t end = std::min(name.find('/', start), name.size());
    std::string part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

bool IsHexDigest(const std::string& text) {
  return text.size() == 64 && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// A listed file, or a folder of listed files (artifact/manifest.py is_listed).
bool IsListed(const std::string& name, const std::map<std::string, ListedFile>& files) {
  if (!SafeName(name)) return false;
  if (files.count(name)) return true;
  auto next = files.lower_bound(name + "/");
  return next != files.end() && next->first.compare(0, name.size() + 1, name + "/") == 0;
}

std::string Str(const json::Value& value, const std::string& what) {
  return std::string(As<ffi::String>(value, what));
}

void CheckSchema(const json::Object& manifest, const std::string& path) {
  auto it = manifest.find(ffi::String("schema"));
  std::optional<ffi::String> schema;
  if (it != manifest.end()) schema = (*it).second.as<ffi::String>();
  if (schema.has_value() && std::string(*schema) == kSchema) return;
  std::string found = it == manifest.end()   ? "none"
                      : schema.has_value() ? Quoted(std::string(*schema))
                                           : "a JSON " + JsonType((*it).second);
  throw BundleError(path + ": written by another version of rwkv-edge (schema " + found + ", this one reads " +
                    Quoted(kSchema) + "): rebuild the bundle with this version");
}

std::map<std::string, ListedFile> ParseFiles(const json::Object& manifest, const std::string& path) {
  auto files = As<json::Object>(Field(manifest, "files", path), path + ": files");
  if (files.size() > kMaxFiles) {
    throw BundleError(path + ": lists " + std::to_string(files.size()) + " files, more than an artifact holds (" +
                      std::to_string(kMaxFiles) + ")");
  }
  std::map<std::string, ListedFile> listed;
  for (const auto& kv : files) {
    const std::string name = Str(kv.first, path + ": a file name");
    const std::string where = path + ": files[" + Quoted(name) + "]";
    if (!SafeName(name)) {
      throw BundleError(path + ": file name " + Quoted(name) +
                        " is not a relative path inside the artifact directory");
    }
    if (name == kManifest || name == kReports[0] || name == kReports[1]) {
      throw BundleError(path + ": file name " + Quoted(name) + " is reserved");
    }
    auto meta = As<json::Object>(kv.second, where);
    ListedFile file;
    file.sha256 = Str(Field(meta, "sha256", where), where + ".sha256");
    if (!IsHexDigest(file.sha256)) throw BundleError(where + ".sha256 is not a sha256 hex digest");
    file.bytes = As<int64_t>(Field(meta, "bytes", where), where + ".bytes");
    if (file.bytes < 0) throw BundleError(where + ".bytes is negative");
    listed.emplace(name, std::move(file));
  }
  return listed;
}

// Every graph's file and params name a listed file (TVM bundles: the library and its weights).
void CheckGraphFiles(const json::Object& graphs, const std::map<std::string, ListedFile>& files,
                     const std::string& path) {
  Field(graphs, "step", path + ": graphs");
  for (const auto& kv : graphs) {
    const std::string where = path + ": graphs." + Str(kv.first, path + ": a graph role");
    auto graph = As<json::Object>(kv.second, where);
    for (const char* key : {"file", "params"}) {
      auto it = graph.find(ffi::String(key));
      if (it == graph.end() || (*it).second == nullptr) continue;
      std::string name = Str((*it).second, where + "." + key);
      if (!IsListed(name, files)) {
        throw BundleError(where + "." + key + " " + Quoted(name) + " is not one of the listed files");
      }
    }
  }
}

// What the model is: its architecture, its source's sha256, its tokenizer and the file holding it.
// UnsupportedError for an image model, before the language fields it lacks are asked for.
void ParseIdentity(const json::Object& manifest, const std::string& dir, const std::string& path, Manifest* out) {
  out->architecture = Str(Field(manifest, "architecture", path), path + ": architecture");
  auto source = As<json::Object>(Field(manifest, "source", path), path + ": source");
  out->source_sha256 = Str(Field(source, "sha256", path + ": source"), path + ": source.sha256");
  if (!IsHexDigest(out->source_sha256)) throw BundleError(path + ": source.sha256 is not a sha256 hex digest");
  out->tokenizer = Str(Field(manifest, "tokenizer", path), path + ": tokenizer");
  if (out->tokenizer == "none") {
    throw UnsupportedError(dir + ": an image model (architecture " + Quoted(out->architecture) +
                           "); this runtime runs language models");
  }
  auto file = manifest.find(ffi::String("tokenizer_file"));
  if (file != manifest.end() && (*file).second != nullptr) {
    out->tokenizer_file = Str((*file).second, path + ": tokenizer_file");
    if (!out->files.count(out->tokenizer_file)) {
      throw BundleError(path + ": tokenizer_file " + Quoted(out->tokenizer_file) + " is not one of the listed files");
    }
  }
}

// The fields the runtime uses: the vocabulary, the target, the state, the weights and prefill graphs.
void ParseRuntimeFields(const json::Object& manifest, const std::string& path, Manifest* out) {
  auto config = As<json::Object>(Field(manifest, "config", path), path + ": config");
  out->vocab_size = As<int64_t>(Field(config, "vocab_size", path + ": config"), path + ": config.vocab_size");
  auto target = As<json::Object>(Field(manifest, "target", path), path + ": target");
  out->triple = Str(Field(target, "triple", path + ": target"), path + ": target.triple");
  for (const json::Value& item : As<json::Array>(Field(manifest, "state", path), path + ": state")) {
    auto entry = As<json::Object>(item, path + ": state entry");
    StateSpec spec;
    spec.input = Str(Field(entry, "input", path + ": state entry"), path + ": state input");
    spec.output = Str(Field(entry, "output", path + ": state entry"), path + ": state output");
    for (const json::Value& d : As<json::Array>(Field(entry, "shape", path + ": state entry"), path + ": shape")) {
      spec.shape.push_back(As<int64_t>(d, path + ": state shape"));
    }
    out->state.push_back(std::move(spec));
  }
  auto graphs = As<json::Object>(Field(manifest, "graphs", path), path + ": graphs");
  auto step = As<json::Object>(Field(graphs, "step", path + ": graphs"), path + ": graphs.step");
  auto params = step.find(ffi::String("params"));
  if (params != step.end() && (*params).second != nullptr) {
    out->params = Str((*params).second, path + ": graphs.step.params");
    out->num_params =
        As<int64_t>(Field(step, "num_params", path + ": graphs.step"), path + ": graphs.step.num_params");
    if (out->num_params < 0 || out->num_params > static_cast<int64_t>(kMaxFiles)) {
      throw BundleError(path + ": graphs.step.num_params " + std::to_string(out->num_params) + " is out of range");
    }
  }
  auto prefill = graphs.find(ffi::String("prefill"));
  if (prefill != graphs.end()) {  // the same weights as main (compile/tvm/params.py lifts one list for both)
    auto graph = As<json::Object>((*prefill).second, path + ": graphs.prefill");
    const std::string where = path + ": graphs.prefill";
    out->prefill = Str(Field(graph, "function", where), where + ".function");
    out->chunk = As<int64_t>(Field(graph, "chunk", where), where + ".chunk");
    out->all_logits = As<bool>(Field(graph, "all_logits", where), where + ".all_logits");
    if (out->chunk < 1 || out->chunk > kMaxChunk) {
      throw BundleError(where + ".chunk " + std::to_string(out->chunk) + " is not 1 to " + std::to_string(kMaxChunk) +
                        " tokens");
    }
  }
}

Manifest ParseManifest(const std::string& data, const std::string& dir) {
  const std::string path = dir + "/" + kManifest;
  ffi::String error;
  json::Value root = json::Parse(ffi::String(data), &error);
  if (!error.empty()) throw BundleError(path + ": unreadable JSON (" + std::string(error) + ")");
  auto manifest = root.as<json::Object>();
  if (!manifest.has_value()) {
    throw BundleError(path + ": expected a JSON object, got a JSON " + JsonType(root) + ": not a manifest");
  }
  CheckSchema(*manifest, path);
  std::string kind = Str(Field(*manifest, "kind", path), path + ": kind");
  if (kind != "tvm") throw BundleError(dir + ": holds a " + kind + " artifact, not a TVM bundle");

  Manifest out;
  out.files = ParseFiles(*manifest, path);
  CheckGraphFiles(As<json::Object>(Field(*manifest, "graphs", path), path + ": graphs"), out.files, path);
  ParseIdentity(*manifest, dir, path, &out);
  ParseRuntimeFields(*manifest, path, &out);
  if (out.tokenizer_file == kLibrary || out.tokenizer_file == out.params) {
    throw BundleError(path + ": tokenizer_file " + Quoted(out.tokenizer_file) + " names the model's code or weights");
  }
  if (!out.files.count(kLibrary)) {
    std::string names;
    for (const auto& kv : out.files) names += (names.empty() ? "" : ", ") + kv.first;
    throw BundleError(dir + ": holds no linked " + kLibrary + " (files: " + names + "); link it for the target first");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// loading

// A memfd holding `bytes`, sealed: no process can write, shrink or grow it from now on.
int SealedCopy(const std::vector<uint8_t>& bytes, const std::string& path) {
  int fd = memfd_create("rwkv-edge model.so", MFD_CLOEXEC | MFD_ALLOW_SEALING | kMfdExec);
  if (fd < 0 && errno == EINVAL) fd = memfd_create("rwkv-edge model.so", MFD_CLOEXEC | MFD_ALLOW_SEALING);  // < 6.3
  if (fd < 0) {
    throw std::runtime_error(path + ": cannot make an in-memory copy to load (memfd_create: " + Errno() + ")");
  }
  Fd owner(fd);
  for (size_t done = 0; done < bytes.size();) {
    ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(path + ": cannot write its in-memory copy (" + Errno() + ")");
    done += static_cast<size_t>(n);
  }
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    throw std::runtime_error(path + ": cannot seal its in-memory copy (" + Errno() + ")");
  }
  return owner.release();
}

// ---------------------------------------------------------------------------------------------
// the library's interface() and the weights it takes

// Python's tuple syntax, as artifact/interface.py prints a shape: (1,), (1, 16).
std::string Shape(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return "(" + dims + (shape.size() == 1 ? ",)" : ")");
}

std::string Describe(const TensorSpec& t) { return t.dtype + " " + Shape(t.shape); }

std::vector<TensorSpec> Specs(const json::Value& value, const std::string& where) {
  std::vector<TensorSpec> specs;
  for (const json::Value& item : As<json::Array>(value, where)) {
    auto pair = As<json::Array>(item, where + " entry");
    if (pair.size() != 2) throw BundleError(where + ": an entry is not [dtype, shape]");
    TensorSpec spec;
    spec.dtype = Str(pair[0], where + " dtype");
    for (const json::Value& d : As<json::Array>(pair[1], where + " shape")) {
      int64_t n = As<int64_t>(d, where + " shape");
      if (n < 0) throw BundleError(where + ": a negative dimension");
      spec.shape.push_back(n);
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

// (what a function must take or return by the manifest, the field that says so)
using Expected = std::vector<std::pair<TensorSpec, std::string>>;

// `first` (the token or the logits), then the state tensors, batch axis 1, in manifest order.
Expected StateSpecs(const Manifest& m, Expected first) {
  for (const StateSpec& t : m.state) {
    std::vector<int64_t> shape = t.shape;
    shape.insert(shape.begin(), 1);
    first.push_back({{"float32", shape}, "state " + t.output});  // the output's name stands for the tensor
  }
  return first;
}

void Compare(const std::string& where, const std::string& function, const std::string& side,
             const std::vector<TensorSpec>& got, const Expected& want) {
  if (got.size() != want.size()) {
    throw BundleError(where + ": " + function + " has " + std::to_string(got.size()) + " " + side + "s, the manifest implies " +
                      std::to_string(want.size()) + ": it belongs to another model");
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const TensorSpec& expected = want[i].first;
    if (got[i].dtype != expected.dtype || got[i].shape != expected.shape) {
      throw BundleError(where + ": " + function + "'s " + side + " " + std::to_string(i) + " is " + Describe(got[i]) +
                        ", the manifest implies " + Describe(expected) + " (" + want[i].second + ")");
    }
  }
}

std::string ParamsDtype(const std::string& code) {  // artifact/params.py DTYPES
  if (code == "F32") return "float32";
  if (code == "F16") return "float16";
  if (code == "I8") return "int8";
  if (code == "U8") return "uint8";
  return "";
}

DLDataType DlType(const std::string& dtype) {
  if (dtype == "float32") return {kDLFloat, 32, 1};
  if (dtype == "float16") return {kDLFloat, 16, 1};
  if (dtype == "int8") return {kDLInt, 8, 1};
  return {kDLUInt, 8, 1};
}

// An "allocator" that hands out a pointer into the mapping: the tensor owns nothing.
struct MappedView {
  void* data;
  void AllocData(DLTensor* t) { t->data = data; }
  void FreeData(DLTensor*) {}
};

}  // namespace

std::string JsonType(const json::Value& value) {
  switch (value.type_index()) {
    case ffi::TypeIndex::kTVMFFINone: return "null";
    case ffi::TypeIndex::kTVMFFIBool: return "boolean";
    case ffi::TypeIndex::kTVMFFIInt: return "integer";
    case ffi::TypeIndex::kTVMFFIFloat: return "number";
    case ffi::TypeIndex::kTVMFFISmallStr:
    case ffi::TypeIndex::kTVMFFIStr: return "string";
    case ffi::TypeIndex::kTVMFFIArray: return "array";
    case ffi::TypeIndex::kTVMFFIMap: return "object";
    default: return value.GetTypeKey();
  }
}

json::Value Field(const json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) throw BundleError(where + ": no field '" + key + "'");
  return (*it).second;
}

MappedFile::MappedFile(int fd, size_t size, const std::string& path) {
  if (size == 0) return;  // nothing to map (mmap refuses a length of 0)
  void* data = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED) throw BundleError(path + ": cannot be mapped (" + Errno() + ")");
  data_ = static_cast<char*>(data);
  size_ = size;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  return *this;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(data_, size_);
}

OpenedBundle OpenBundle(const std::string& dir, const std::string& expect_sha256) {
  Fd dir_fd = OpenDirectory(dir);
  const std::string data = ReadManifestBytes(dir_fd.get(), dir);
  const std::string sha256 = Sha256Hex(data.data(), data.size());
  if (!expect_sha256.empty() && sha256 != expect_sha256) {
    throw BundleError(dir + "/" + kManifest + ": sha256 " + sha256 + ", not the expected " + expect_sha256 +
                      ": this is not the artifact you pinned (rebuilt or modified since)");
  }
  OpenedBundle bundle;
  bundle.dir = dir;
  bundle.manifest = ParseManifest(data, dir);
  bundle.manifest.sha256 = sha256;

  for (const auto& [name, listed] : bundle.manifest.files) {  // sizes first: a truncated copy fails at once
    OpenListedOfSize(dir_fd.get(), dir, name, listed);
  }
  for (const auto& [name, listed] : bundle.manifest.files) {
    const std::string path = dir + "/" + name;
    Fd fd = OpenListedOfSize(dir_fd.get(), dir, name, listed);  // again: what is hashed is what was checked
    std::string digest;
    if (name == kLibrary) {  // code: kept in memory, loaded from these very bytes
      bundle.library = ReadExactly(fd.get(), listed, path);
      digest = Sha256Hex(bundle.library.data(), bundle.library.size());
    } else if (name == bundle.manifest.tokenizer_file) {  // the vocabulary: kept, hashed over those bytes
      bundle.vocabulary.resize(static_cast<size_t>(listed.bytes));
      if (ReadUpTo(fd.get(), bundle.vocabulary.data(), bundle.vocabulary.size(), path) != bundle.vocabulary.size()) {
        throw BundleError(path + ": shorter than the manifest says (modified or partly written)");
      }
      digest = Sha256Hex(bundle.vocabulary.data(), bundle.vocabulary.size());
    } else if (name == bundle.manifest.params) {  // weights: mapped, hashed through the mapping
      bundle.params = MappedFile(fd.get(), static_cast<size_t>(listed.bytes), path);
      digest = Sha256Hex(bundle.params.data(), bundle.params.size());
    } else {
      digest = HashStream(fd.get(), path);
    }
    if (digest != listed.sha256) {
      throw BundleError(path + ": sha256 differs from the manifest (modified or partly written)");
    }
  }
  return bundle;
}

std::vector<TensorSpec> CheckInterface(const Manifest& m, const std::string& text, const std::string& where) {
  auto fail = [&](const std::string& problem) {
    return BundleError(where + ": its interface() " + problem + ": not a library made by this rwkv-edge; recompile it");
  };
  if (text.size() > kMaxInterfaceBytes) throw fail("is " + std::to_string(text.size()) + " bytes");
  ffi::String error;
  json::Value root = json::Parse(ffi::String(text), &error);
  std::optional<json::Object> record = root.as<json::Object>();
  if (!error.empty() || !record.has_value()) throw fail("is not a JSON object");
  auto format = record->find(ffi::String("format"));
  if (format == record->end() || !(*format).second.as<ffi::String>().has_value() ||
      std::string((*format).second.cast<ffi::String>()) != kInterfaceFormat) {
    throw fail(std::string("is not an '") + kInterfaceFormat + "' object");
  }
  const int64_t rows = As<int64_t>(Field(*record, "vocab_size", where + ": interface()"), where + ": interface().vocab_size");
  if (rows != m.vocab_size) {
    throw BundleError(where + ": its embedding has " + std::to_string(rows) + " rows, the manifest says vocab_size " +
                      std::to_string(m.vocab_size));
  }
  auto functions = As<json::Object>(Field(*record, "functions", where + ": interface()"), where + ": interface().functions");
  const std::vector<int64_t> logits = {1, m.vocab_size};
  std::vector<std::tuple<std::string, std::string, Expected, Expected>> graphs = {
      {"step", "main", StateSpecs(m, {{{"int64", {1}}, "a step takes one token"}}),
       StateSpecs(m, {{{"float32", logits}, "config.vocab_size"}})}};
  if (!m.prefill.empty()) {
    std::vector<int64_t> all = {1, m.chunk, m.vocab_size};
    graphs.emplace_back("prefill", m.prefill, StateSpecs(m, {{{"int64", {1, m.chunk}}, "graphs.prefill.chunk"}}),
                        StateSpecs(m, {m.all_logits ? std::make_pair(TensorSpec{"float32", all},
                                                                           std::string("graphs.prefill.all_logits, config.vocab_size"))
                                                          : std::make_pair(TensorSpec{"float32", logits},
                                                                           std::string("config.vocab_size"))}));
  }
  for (const auto& [role, function, inputs, outputs] : graphs) {
    auto found = functions.find(ffi::String(function));
    if (found == functions.end()) {
      throw BundleError(where + ": has no function " + Quoted(function) + ", which the manifest's graphs." + role + " names");
    }
    auto signature = As<json::Object>((*found).second, where + ": interface()." + function);
    Compare(where, function, "input", Specs(Field(signature, "inputs", where), where + ": interface() inputs"), inputs);
    Compare(where, function, "output", Specs(Field(signature, "outputs", where), where + ": interface() outputs"), outputs);
  }
  std::vector<TensorSpec> weights = Specs(Field(*record, "weights", where + ": interface()"), where + ": interface().weights");
  if (static_cast<int64_t>(weights.size()) != m.num_params) {  // 0 where the manifest lists no params file
    throw BundleError(where + ": its functions take " + std::to_string(weights.size()) +
                      " weights, the manifest's graphs.step.num_params says " + std::to_string(m.num_params) +
                      ": the library belongs to another bundle");
  }
  return weights;
}

Weights::Weights(MappedFile file, const std::string& path, const std::vector<TensorSpec>& expected)
    : file_(std::move(file)) {
  const char* base = file_.data();
  const size_t size = file_.size();
  if (size < 8) throw BundleError(path + ": not a params file (shorter than its header length)");
  uint64_t length = 0;
  for (int b = 7; b >= 0; --b) length = length << 8 | static_cast<unsigned char>(base[b]);
  if (length == 0 || length > kMaxParamsHeader || length > size - 8) {
    throw BundleError(path + ": not a params file (a header of " + std::to_string(length) + " bytes in a " +
                      std::to_string(size) + "-byte file)");
  }
  const size_t first = 8 + static_cast<size_t>(length);
  ffi::String error;
  json::Value root = json::Parse(ffi::String(std::string(base + 8, length)), &error);
  std::optional<json::Object> header = root.as<json::Object>();
  if (!error.empty() || !header.has_value()) throw BundleError(path + ": unreadable header");
  auto meta = header->find(ffi::String("__metadata__"));
  bool ours = false;
  if (meta != header->end()) {
    if (auto m = (*meta).second.as<json::Object>()) {
      auto format = m->find(ffi::String("format"));
      ours = format != m->end() && (*format).second.as<ffi::String>().has_value() &&
             std::string((*format).second.cast<ffi::String>()) == kParamsFormat;
    }
  }
  if (!ours || first % kParamsAlign != 0) {
    throw BundleError(path + ": not an aligned rwkv-edge params file (an older bundle? recompile it)");
  }
  size_t count = 0;
  for (const auto& kv : *header) {
    std::string key(kv.first.cast<ffi::String>());
    if (key.size() > 1 && key[0] == 'w' && key.find_first_not_of("0123456789", 1) == std::string::npos) ++count;
  }
  if (count != expected.size()) {
    throw BundleError(path + ": holds " + std::to_string(count) + " weights, the library takes " +
                      std::to_string(expected.size()));
  }
  size_t end = first;
  for (size_t i = 0; i < expected.size(); ++i) {
    const std::string name = "w" + std::to_string(i);
    auto it = header->find(ffi::String(name));
    if (it == header->end()) throw BundleError(path + ": no " + name);
    tensors_.push_back(View(path, name, As<json::Object>((*it).second, path + ": " + name), expected[i], first, &end));
  }
  if (end != size) {
    throw BundleError(path + ": " + std::to_string(size) + " bytes, its header describes " + std::to_string(end));
  }
}

ffi::Tensor Weights::View(const std::string& path, const std::string& name, const json::Object& entry,
                          const TensorSpec& expected, size_t first, size_t* end) {
  const std::string where = path + ": " + name;
  const std::string code = Str(Field(entry, "dtype", where), where + " dtype");
  TensorSpec spec{ParamsDtype(code), {}};
  if (spec.dtype.empty()) throw BundleError(where + ": dtype " + Quoted(code) + " (a params file holds F32, F16, I8, U8)");
  const size_t itemsize = DlType(spec.dtype).bits / 8;
  size_t bytes = itemsize;
  for (const json::Value& d : As<json::Array>(Field(entry, "shape", where), where + " shape")) {
    int64_t n = As<int64_t>(d, where + " shape");
    if (n < 0 || (n > 0 && bytes > file_.size() / static_cast<size_t>(n))) {
      throw BundleError(where + ": a negative dimension, or more bytes than the file holds");
    }
    spec.shape.push_back(n);
    bytes *= static_cast<size_t>(n);
  }
  if (spec.dtype != expected.dtype || spec.shape != expected.shape) {
    throw BundleError(where + " is " + Describe(spec) + ", the library takes " + Describe(expected) +
                      ": the weights of another bundle");
  }
  auto offsets = As<json::Array>(Field(entry, "data_offsets", where), where + " data_offsets");
  if (offsets.size() != 2) throw BundleError(where + ": data_offsets is not [begin, end]");
  const int64_t begin = As<int64_t>(offsets[0], where + " offset"), stop = As<int64_t>(offsets[1], where + " offset");
  if (begin < 0 || stop < begin || static_cast<size_t>(stop - begin) != bytes ||
      static_cast<size_t>(stop) > file_.size() - first || (first + static_cast<size_t>(begin)) % kParamsAlign != 0) {
    throw BundleError(where + ": bytes " + std::to_string(begin) + ".." + std::to_string(stop) + " of the data: not " +
                      std::to_string(kParamsAlign) + "-byte aligned, not its size, or past the end of the file");
  }
  *end = std::max(*end, first + static_cast<size_t>(stop));
  // The library only reads its weights: a view of the read-only mapping is safe to hand it.
  return ffi::Tensor::FromNDAlloc(MappedView{const_cast<char*>(file_.data()) + first + begin},
                                  ffi::ShapeView(spec.shape.data(), spec.shape.size()), DlType(spec.dtype),
                                  DLDevice{kDLCPU, 0});
}

ffi::Module LoadLibrary(std::vector<uint8_t> bytes, const std::string& path) {
  // The memfd is never closed: the dynamic loader knows a library by the path it was loaded from
  // and hands back the loaded one for a path it has seen, so a later memfd given this number (a
  // second bundle in the same process) would otherwise "load" as this library.
  const int fd = SealedCopy(bytes, path);
  std::vector<uint8_t>().swap(bytes);  // the copy in the memfd is the one that counts now
  // Module::LoadFromFile picks its loader by the text after the path's last '.', which
  // /proc/self/fd/N lacks: call the loader it picks for a ".so" path directly.
  std::optional<ffi::Function> loader = ffi::Function::GetGlobal("ffi.Module.load_from_file.so");
  if (!loader.has_value()) throw std::runtime_error("the TVM runtime registers no loader for shared libraries");
  try {
    return (*loader)("/proc/self/fd/" + std::to_string(fd), "so").cast<ffi::Module>();
  } catch (const ffi::Error& e) {  // the message names /proc/self/fd/N: say which file that is
    throw std::runtime_error(path + ": TVM cannot load it: " + std::string(e.message()));
  }
}

}  // namespace rwkv_edge
