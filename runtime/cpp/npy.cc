// NPY files (npy.h).

#include "npy.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace rwkv_edge {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string dims;
  for (int64_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
  return "(" + dims + (shape.size() == 1 ? ",)" : ")");  // Python's tuple syntax, as NPY headers want
}

int64_t ParseDim(const std::string& text, const std::string& path) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos || text.size() > 18) {
    throw NpyError(path + ": shape: not an integer: '" + text + "'");
  }
  return std::stoll(text);
}

}  // namespace

void WriteNpy(const std::string& path, const char* descr, const void* data, size_t nbytes,
              const std::vector<int64_t>& shape) {
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + ShapeText(shape) + ", }";
  size_t total = 10 + header.size() + 1;  // magic + version + length, the dict, '\n'
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw NpyError(path + ": cannot be written");
    uint16_t len = static_cast<uint16_t>(header.size());
    const char magic[] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
    char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    f.write(magic, sizeof(magic));
    f.write(len_le, 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
    if (!f) throw NpyError(path + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw NpyError(path + ": cannot be renamed into place");
}

std::vector<float> ReadNpyF32(const std::string& path, const std::vector<int64_t>& want) {
  size_t count = 1;
  for (int64_t d : want) count *= static_cast<size_t>(d);
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (!ec && size > count * sizeof(float) + (1u << 20)) {  // read nothing larger than a header and the data
    throw NpyError(path + ": " + std::to_string(size) + " bytes, more than a state tensor of shape " +
                   ShapeText(want) + " takes");
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) throw NpyError(path + ": cannot be read");
  std::stringstream s;
  s << f.rdbuf();
  const std::string text = s.str();
  if (text.size() < 10 || text.compare(0, 6, "\x93NUMPY") != 0) throw NpyError(path + ": not an NPY file");
  int major = static_cast<unsigned char>(text[6]);
  size_t len = 0, start = 0;
  if (major == 1) {
    len = static_cast<unsigned char>(text[8]) | static_cast<unsigned char>(text[9]) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (text.size() < 12) throw NpyError(path + ": truncated NPY header");
    for (int b = 3; b >= 0; --b) len = len << 8 | static_cast<unsigned char>(text[8 + b]);
    start = 12;
  } else {
    throw NpyError(path + ": NPY version " + std::to_string(major) + " is not supported");
  }
  if (text.size() < start + len) throw NpyError(path + ": truncated NPY header");
  std::string header = text.substr(start, len);
  auto has = [&](const char* part) { return header.find(part) != std::string::npos; };
  if (!has("'descr': '<f4'") || !has("'fortran_order': False")) {
    throw NpyError(path + ": expected a float32 C-order array (header " + header.substr(0, header.find('}') + 1) + ")");
  }
  size_t open = header.find('(', header.find("'shape'"));
  size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) throw NpyError(path + ": NPY header without a shape");
  std::vector<int64_t> shape;
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  for (std::string d; std::getline(dims, d, ',');) {
    d.erase(std::remove(d.begin(), d.end(), ' '), d.end());
    if (!d.empty()) shape.push_back(ParseDim(d, path));
  }
  std::vector<int64_t> batched = want;
  batched.insert(batched.begin(), 1);
  if (shape != want && shape != batched) {
    throw NpyError(path + ": shape " + ShapeText(shape) + ", expected " + ShapeText(batched));
  }
  if (text.size() != start + len + count * sizeof(float)) throw NpyError(path + ": data size does not match its shape");
  std::vector<float> data(count);
  std::memcpy(data.data(), text.data() + start + len, count * sizeof(float));
  return data;
}

}  // namespace rwkv_edge
