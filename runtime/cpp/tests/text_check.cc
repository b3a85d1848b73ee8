// text_check: the runtime's tokenizer, sampler and text stream on files, for the tests (no TVM).
//
//   text_check encode TOKENIZER VOCAB VOCAB_SIZE TEXT_FILE IDS_OUT   ids as int32 little-endian
//   text_check decode TOKENIZER VOCAB VOCAB_SIZE IDS_FILE BYTES_OUT
//   text_check sample LOGITS VOCAB_SIZE IDS_OUT [--temperature T] [--top-p P] [--top-k K]
//                     [--presence X] [--frequency X] [--decay X] [--seed S] [--repeat R]
//       one draw per row of LOGITS (.npy float32 (T, V) or (V,), or raw float32), one sampler for
//       all rows; --repeat R draws R times from each row (timing)
//   text_check stream TOKENS_FILE OUT [STOP_HEX ...]
//       TOKENS_FILE: records (u32 little-endian length, bytes); OUT: per push a record (u32 length,
//       the released bytes, u8 stopped), then one record of Flush() (u32 length, bytes)
//
// VOCAB is the vocabulary file ("-" for none: the bytes tokenizer). Timings go to stdout as
// `<what> <seconds>`; errors are one line on stderr, exit status 1 (bad input) or 2 (usage).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../sampler.h"
#include "../text_stream.h"
#include "../tokenizer.h"

namespace {

using rwkv_edge::LoadTokenizer;

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int32_t ParseInt(const std::string& s) {
  size_t used = 0;
  const long v = std::stol(s, &used);
  if (used != s.size()) throw Usage("not an integer: " + s);
  return static_cast<int32_t>(v);
}

std::unique_ptr<rwkv_edge::Tokenizer> Load(char** argv) {
  const std::string vocab = std::string(argv[1]) == "-" ? std::string() : ReadFile(argv[1]);
  return LoadTokenizer(argv[0], vocab, ParseInt(argv[2]));
}

int Encode(char** argv) {
  auto tok = Load(argv);
  const std::string text = ReadFile(argv[3]);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok->Encode(text);
  std::printf("encode_seconds %.6f\nbytes %zu\nids %zu\n", Seconds(t0), text.size(), ids.size());
  WriteFile(argv[4], std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t)));
  return 0;
}

int Decode(char** argv) {
  auto tok = Load(argv);
  const std::string raw = ReadFile(argv[3]);
  std::string out;
  for (size_t k = 0; k + 4 <= raw.size(); k += 4) {
    int32_t id;
    std::memcpy(&id, raw.data() + k, 4);
    if (id < 0 || id >= tok->size()) throw std::runtime_error("token id " + std::to_string(id) + " is outside the vocabulary");
    out.append(tok->TokenBytes(id));
  }
  WriteFile(argv[4], out);
  return 0;
}

// Float32 rows of `vocab_size` from an .npy file (little-endian float32, C order) or a raw file.
std::vector<float> ReadLogits(const std::string& path, int32_t vocab_size) {
  std::string data = ReadFile(path);
  if (data.compare(0, 6, "\x93NUMPY") == 0) {
    if (data.size() < 10) throw std::runtime_error(path + ": truncated .npy header");
    const int major = static_cast<unsigned char>(data[6]);
    size_t header_len, start;
    if (major == 1) {
      header_len = static_cast<unsigned char>(data[8]) | static_cast<unsigned char>(data[9]) << 8;
      start = 10;
    } else {
      if (data.size() < 12) throw std::runtime_error(path + ": truncated .npy header");
      header_len = 0;
      for (int b = 3; b >= 0; --b) header_len = header_len << 8 | static_cast<unsigned char>(data[8 + b]);
      start = 12;
    }
    if (start + header_len > data.size()) throw std::runtime_error(path + ": truncated .npy header");
    const std::string header = data.substr(start, header_len);
    if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos) {
      throw std::runtime_error(path + ": not a C-order little-endian float32 array");
    }
    data.erase(0, start + header_len);
  }
  if (data.size() % (sizeof(float) * static_cast<size_t>(vocab_size)) != 0 || data.empty()) {
    throw std::runtime_error(path + ": not whole rows of " + std::to_string(vocab_size) + " float32");
  }
  std::vector<float> logits(data.size() / sizeof(float));
  std::memcpy(logits.data(), data.data(), data.size());
  return logits;
}

int Sample(int argc, char** argv) {
  const int32_t v = ParseInt(argv[1]);
  rwkv_edge::SamplerParams params;
  int32_t repeat = 1;
  for (int i = 3; i < argc; i += 2) {
    if (i + 1 >= argc) throw Usage(std::string("no value after ") + argv[i]);
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--temperature") params.temperature = std::stod(value);
    else if (flag == "--top-p") params.top_p = std::stod(value);
    else if (flag == "--top-k") params.top_k = ParseInt(value);
    else if (flag == "--presence") params.presence_penalty = std::stod(value);
    else if (flag == "--frequency") params.frequency_penalty = std::stod(value);
    else if (flag == "--decay") params.penalty_decay = std::stod(value);
    else if (flag == "--seed") params.seed = std::stoull(value);
    else if (flag == "--repeat") repeat = ParseInt(value);
    else throw Usage("unknown option " + flag);
  }
  const std::vector<float> logits = ReadLogits(argv[0], v);
  rwkv_edge::Sampler sampler(params, v);
  std::vector<int32_t> ids;
  const size_t rows = logits.size() / static_cast<size_t>(v);
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t r = 0; r < rows; ++r) {
    for (int32_t k = 0; k < repeat; ++k) ids.push_back(sampler.Sample(logits.data() + r * static_cast<size_t>(v)));
  }
  std::printf("sample_seconds %.6f\ndraws %zu\n", Seconds(t0), ids.size());
  WriteFile(argv[2], std::string(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(int32_t)));
  return 0;
}

std::string Unhex(const std::string& hex) {
  if (hex.size() % 2) throw Usage("odd hex string " + hex);
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

void AppendRecord(std::string* out, const std::string& bytes) {
  const auto n = static_cast<uint32_t>(bytes.size());
  for (int b = 0; b < 4; ++b) out->push_back(static_cast<char>(n >> (8 * b)));
  out->append(bytes);
}

int Stream(int argc, char** argv) {
  std::vector<std::string> stops;
  for (int i = 2; i < argc; ++i) stops.push_back(Unhex(argv[i]));
  rwkv_edge::TextStream stream(stops);
  const std::string in = ReadFile(argv[0]);
  std::string out;
  for (size_t k = 0; k < in.size();) {
    if (k + 4 > in.size()) throw std::runtime_error("truncated record");
    uint32_t n = 0;
    for (int b = 3; b >= 0; --b) n = n << 8 | static_cast<unsigned char>(in[k + static_cast<size_t>(b)]);
    if (k + 4 + n > in.size()) throw std::runtime_error("truncated record");
    bool stopped = false;
    AppendRecord(&out, stream.Push(std::string_view(in).substr(k + 4, n), &stopped));
    out.push_back(static_cast<char>(stopped));
    k += 4 + n;
  }
  AppendRecord(&out, stream.Flush());
  WriteFile(argv[1], out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if ((mode == "encode" || mode == "decode") && argc == 7) return mode == "encode" ? Encode(argv + 2) : Decode(argv + 2);
    if (mode == "sample" && argc >= 5) return Sample(argc - 2, argv + 2);
    if (mode == "stream" && argc >= 4) return Stream(argc - 2, argv + 2);
    throw Usage("usage: text_check encode|decode|sample|stream ... (see text_check.cc)");
  } catch (const Usage& e) {
    std::fprintf(stderr, "text_check: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {  // TokenizerError, SamplerError, unreadable files, ...
    std::fprintf(stderr, "text_check: error: %s\n", e.what());
    return 1;
  }
}
