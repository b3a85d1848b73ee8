// State files (state_file.h): the writer and the strict reader.

#include "state_file.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/extra/json.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

namespace rwkv_edge {
namespace {

constexpr const char* kFormat = "rwkv-edge.state/1";
constexpr const char* kLogits = "logits";
constexpr uint64_t kMaxHeader = 16u << 20;

std::string Errno() { return std::strerror(errno); }

// A tensor of the file: its name and shape, in the order the data holds them.
struct Entry {
  std::string name;
  std::vector<int64_t> shape;
  size_t count() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

std::vector<Entry> Entries(const Manifest& m, bool logits) {
  std::vector<Entry> entries;
  for (const StateSpec& spec : m.state) entries.push_back({spec.input, spec.shape});
  if (logits) entries.push_back({kLogits, {m.vocab_size}});
  return entries;
}

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return "[" + dims + "]";
}

// A file descriptor, closed when it goes.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

void WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw IoError(path + ": cannot be written (" + Errno() + ")");
    data += n;
    size -= static_cast<size_t>(n);
  }
}

bool ReadAll(int fd, char* data, size_t size) {
  while (size > 0) {
    ssize_t n = read(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// The checks of one JSON value, failing as StateError "PATH: WHAT ...".
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void Fail(const std::string& problem) const { throw StateError(path_ + ": " + problem); }

  template <typename T>
  T Get(const json::Value& value, const std::string& what) const {
    std::optional<T> v = value.as<T>();
    if (!v.has_value()) Fail(what + " has the wrong type (" + JsonType(value) + ")");
    return *v;
  }

  json::Value Field(const json::Object& obj, const char* key, const std::string& where) const {
    auto it = obj.find(ffi::String(key));
    if (it == obj.end()) Fail(where + " has no '" + key + "'");
    return (*it).second;
  }

  std::string Str(const json::Value& value, const std::string& what) const {
    return std::string(Get<ffi::String>(value, what));
  }

 private:
  std::string path_;
};

}  // namespace

void SaveStateFile(const std::string& path, const Manifest& m, const float* state, const float* logits) {
  const std::vector<Entry> entries = Entries(m, logits != nullptr);
  std::string header = "{\"__metadata__\":{\"format\":" + JsonString(kFormat) +
                       ",\"architecture\":" + JsonString(m.architecture) +
                       ",\"source_sha256\":" + JsonString(m.source_sha256) + "}";
  size_t offset = 0;
  for (const Entry& e : entries) {
    const size_t bytes = e.count() * sizeof(float);
    header += "," + JsonString(e.name) + ":{\"dtype\":\"F32\",\"shape\":" + ShapeText(e.shape) +
              ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // 8 + N: a multiple of 8
  char length[8];
  for (int b = 0; b < 8; ++b) length[b] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * b)) & 0xff);

  const std::string partial = path + ".partial";
  {
    Fd fd{open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
    if (fd.fd < 0) throw IoError(path + ": cannot be written (" + Errno() + ")");
    try {
      WriteAll(fd.fd, length, 8, path);
      WriteAll(fd.fd, header.data(), header.size(), path);
      // float32 little-endian: this runtime runs on little-endian machines only (x86-64, aarch64)
      size_t values = 0;
      for (const StateSpec& spec : m.state) {
        size_t n = 1;
        for (int64_t d : spec.shape) n *= static_cast<size_t>(d);
        values += n;
      }
      WriteAll(fd.fd, reinterpret_cast<const char*>(state), values * sizeof(float), path);
      if (logits != nullptr) {
        WriteAll(fd.fd, reinterpret_cast<const char*>(logits), static_cast<size_t>(m.vocab_size) * sizeof(float), path);
      }
      if (fsync(fd.fd) != 0) throw IoError(path + ": cannot be written (" + Errno() + ")");
    } catch (...) {
      unlink(partial.c_str());
      throw;
    }
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    const std::string reason = Errno();
    unlink(partial.c_str());
    throw IoError(path + ": cannot be renamed into place (" + reason + ")");
  }
}

LoadedState LoadStateFile(const std::string& path, const Manifest& m) {
  const Reader r(path);
  Fd fd{open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (fd.fd < 0) throw IoError(path + ": cannot be read (" + Errno() + ")");
  struct stat st {};
  if (fstat(fd.fd, &st) != 0 || !S_ISREG(st.st_mode)) r.Fail("not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  char length_bytes[8];
  if (size < 8 || !ReadAll(fd.fd, length_bytes, 8)) r.Fail("not a state file (shorter than its header length)");
  uint64_t length = 0;
  for (int b = 7; b >= 0; --b) length = length << 8 | static_cast<unsigned char>(length_bytes[b]);
  if (length > kMaxHeader) r.Fail("not a state file (a header of " + std::to_string(length) + " bytes)");
  if (length > size - 8) {
    r.Fail("truncated (a header of " + std::to_string(length) + " bytes in a " + std::to_string(size) + "-byte file)");
  }
  std::string text(static_cast<size_t>(length), '\0');
  if (!ReadAll(fd.fd, text.data(), text.size())) r.Fail("truncated");
  ffi::String error;
  json::Value root = json::Parse(ffi::String(text), &error);
  std::optional<json::Object> header = root.as<json::Object>();
  if (!error.empty() || !header.has_value()) r.Fail("not a state file (its header is not a JSON object)");

  auto meta = r.Get<json::Object>(r.Field(*header, "__metadata__", "the header"), "__metadata__");
  auto format = meta.find(ffi::String("format"));
  std::optional<ffi::String> name;
  if (format != meta.end()) name = (*format).second.as<ffi::String>();
  if (!name.has_value() || std::string(*name) != kFormat) {
    r.Fail(std::string("not a state file of format '") + kFormat + "'");
  }
  const std::string architecture = r.Str(r.Field(meta, "architecture", "__metadata__"), "__metadata__.architecture");
  if (architecture != m.architecture) {
    r.Fail("saved from a model of architecture " + JsonString(architecture) + ", this one is " + JsonString(m.architecture));
  }
  const std::string source = r.Str(r.Field(meta, "source_sha256", "__metadata__"), "__metadata__.source_sha256");
  if (source != m.source_sha256) {
    r.Fail("saved from another model (source sha256 " + JsonString(source) + ", this model's " + m.source_sha256 + ")");
  }

  const bool has_logits = header->find(ffi::String(kLogits)) != header->end();
  const std::vector<Entry> entries = Entries(m, has_logits);
  for (const auto& kv : *header) {
    const std::string key(kv.first.cast<ffi::String>());
    bool known = key == "__metadata__";
    for (const Entry& e : entries) known = known || key == e.name;
    if (!known) r.Fail("holds a tensor " + JsonString(key) + " this model's state has not");
  }
  uint64_t end = 0;
  for (const Entry& e : entries) {
    auto it = header->find(ffi::String(e.name));
    if (it == header->end()) r.Fail("has no tensor " + e.name);
    auto entry = r.Get<json::Object>((*it).second, e.name);
    const std::string dtype = r.Str(r.Field(entry, "dtype", e.name), e.name + " dtype");
    if (dtype != "F32") r.Fail(e.name + " has dtype " + JsonString(dtype) + ", not F32");
    std::vector<int64_t> shape;
    for (const json::Value& d : r.Get<json::Array>(r.Field(entry, "shape", e.name), e.name + " shape")) {
      shape.push_back(r.Get<int64_t>(d, e.name + " shape"));
    }
    if (shape != e.shape) r.Fail(e.name + " has shape " + ShapeText(shape) + ", this model's is " + ShapeText(e.shape));
    auto offsets = r.Get<json::Array>(r.Field(entry, "data_offsets", e.name), e.name + " data_offsets");
    if (offsets.size() != 2) r.Fail(e.name + " data_offsets is not [begin, end]");
    const int64_t begin = r.Get<int64_t>(offsets[0], e.name + " data_offsets");
    const int64_t stop = r.Get<int64_t>(offsets[1], e.name + " data_offsets");
    if (begin < 0 || static_cast<uint64_t>(begin) != end || stop < begin ||
        static_cast<uint64_t>(stop - begin) != e.count() * sizeof(float)) {
      r.Fail(e.name + " data_offsets [" + std::to_string(begin) + ", " + std::to_string(stop) +
             "]: not in order, not contiguous or not its size (expected it at " + std::to_string(end) + ")");
    }
    end = static_cast<uint64_t>(stop);
  }
  const uint64_t data_size = size - 8 - length;
  if (data_size < end) {
    r.Fail("truncated (" + std::to_string(size) + " bytes, its header describes " + std::to_string(8 + length + end) + ")");
  }
  if (data_size > end) {
    r.Fail(std::to_string(data_size - end) + " bytes after the data its header describes");
  }
  LoadedState out;
  size_t values = 0;
  for (const StateSpec& spec : m.state) values += Entry{spec.input, spec.shape}.count();
  out.state.resize(values);
  if (!ReadAll(fd.fd, reinterpret_cast<char*>(out.state.data()), values * sizeof(float))) r.Fail("truncated");
  if (has_logits) {
    out.logits.resize(static_cast<size_t>(m.vocab_size));
    if (!ReadAll(fd.fd, reinterpret_cast<char*>(out.logits.data()), out.logits.size() * sizeof(float))) {
      r.Fail("truncated");
    }
  }
  return out;
}

}  // namespace rwkv_edge
