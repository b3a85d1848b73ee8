// The "bytes" and "world" tokenizers. The World vocabulary is read as tokenizer.py reads it (each line
// `<id> <Python str or bytes literal> <byte length>`, the literal evaluated as ast.literal_eval does)
// and encoded by greedy longest match with a byte trie, as pyrwkv_tokenizer does.

#include "tokenizer.h"

#include "utf8.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace rwkv_edge {
namespace {

constexpr char kWorldName[] = "world vocabulary";

// ---------------------------------------------------------------------------------------------
// Reading the vocabulary

[[noreturn]] void Fail(size_t lineno, const std::string& what) {
  throw TokenizerError(std::string(kWorldName) + " line " + std::to_string(lineno) + ": " + what);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Appends code point `cp` as UTF-8; false for a surrogate or a value past U+10FFFF (Python's
// str.encode("utf-8") refuses those).
bool AppendUtf8(uint32_t cp, std::string* out) {
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return true;
}

// Length of the valid UTF-8 character at s[i], or 0 where none starts there.
size_t Utf8CharLength(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = at(i);
  if (c < 0x80) return 1;
  const Utf8Lead lead = ReadUtf8Lead(c);
  const size_t n = lead.length;
  const unsigned char lo = lead.lo, hi = lead.hi;
  if (n == 0) return 0;
  if (i + n > s.size() || at(i + 1) < lo || at(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if ((at(i + k) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// A non-negative decimal number of at most 9 digits, or -1.
int64_t ParseCount(std::string_view s) {
  if (s.empty() || s.size() > 9) return -1;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

// The bytes of a Python string or bytes literal ('...' or "...", prefix b, r, u, br or rb in either
// case), as ast.literal_eval gives them (a str encoded as UTF-8). Adjacent literals are not joined.
std::string ParseLiteral(std::string_view lit, size_t lineno) {
  bool is_bytes = false, raw = false, unicode = false;
  size_t i = 0;
  for (; i < lit.size() && i < 2; ++i) {
    const char c = static_cast<char>(lit[i] | 0x20);  // lower case
    if (c == 'b' && !is_bytes) is_bytes = true;
    else if (c == 'r' && !raw) raw = true;
    else if (c == 'u' && i == 0) unicode = true;
    else break;
  }
  if (unicode && i > 1) Fail(lineno, "expected a quoted str or bytes literal");
  if (i >= lit.size() || (lit[i] != '\'' && lit[i] != '"')) Fail(lineno, "expected a quoted str or bytes literal");
  const char quote = lit[i++];
  if (lit.size() < i + 1 || lit.back() != quote) Fail(lineno, "the literal does not end with its quote");
  const std::string_view body = lit.substr(i, lit.size() - i - 1);
  std::string out;
  for (size_t k = 0; k < body.size();) {
    const char c = body[k];
    if (c == quote) Fail(lineno, "an unescaped quote inside the literal (adjacent literals are not joined)");
    if (c == '\0') Fail(lineno, "a NUL byte");
    if (c == '\\' && raw) {  // kept as written; it only stops a quote or backslash after it from ending the literal
      if (k + 1 >= body.size()) Fail(lineno, "the literal ends with a backslash");
      out.push_back(c);
      if (body[k + 1] == quote || body[k + 1] == '\\') out.push_back(body[++k]);
      ++k;
      continue;
    }
    if (c != '\\') {
      if (static_cast<unsigned char>(c) < 0x80) {
        out.push_back(c);
        ++k;
        continue;
      }
      if (is_bytes) Fail(lineno, "a bytes literal holds a non-ASCII character");
      const size_t n = Utf8CharLength(body, k);
      if (n == 0) Fail(lineno, "invalid UTF-8");
      out.append(body.substr(k, n));
      k += n;
      continue;
    }
    if (k + 1 >= body.size()) Fail(lineno, "the literal ends with a backslash");
    const char e = body[k + 1];
    k += 2;
    switch (e) {
      case '\\': out.push_back('\\'); break;
      case '\'': out.push_back('\''); break;
      case '"': out.push_back('"'); break;
      case 'a': out.push_back('\a'); break;
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'v': out.push_back('\v'); break;
      case 'x': {
        const int hi = k < body.size() ? HexDigit(body[k]) : -1;
        const int lo = k + 1 < body.size() ? HexDigit(body[k + 1]) : -1;
        if (hi < 0 || lo < 0) Fail(lineno, "a \\x escape without two hex digits");
        const uint32_t v = static_cast<uint32_t>(hi * 16 + lo);
        if (is_bytes) {
          out.push_back(static_cast<char>(v));
        } else {
          AppendUtf8(v, &out);
        }
        k += 2;
        break;
      }
      case 'u':
      case 'U': {
        if (is_bytes) {  // not an escape in a bytes literal: kept as written
          out.push_back('\\');
          out.push_back(e);
          break;
        }
        const size_t digits = e == 'u' ? 4 : 8;
        uint32_t v = 0;
        for (size_t d = 0; d < digits; ++d) {
          const int h = k + d < body.size() ? HexDigit(body[k + d]) : -1;
          if (h < 0) Fail(lineno, std::string("a \\") + e + " escape without " + std::to_string(digits) + " hex digits");
          v = v * 16 + static_cast<uint32_t>(h);
        }
        if (!AppendUtf8(v, &out)) Fail(lineno, "a \\u escape names a surrogate or a value past U+10FFFF");
        k += digits;
        break;
      }
      case 'N':
        if (!is_bytes) Fail(lineno, "\\N{...} escapes are not supported");
        out.push_back('\\');
        out.push_back(e);
        break;
      default:
        if (e >= '0' && e <= '7') {  // up to three octal digits
          uint32_t v = static_cast<uint32_t>(e - '0');
          for (int d = 0; d < 2 && k < body.size() && body[k] >= '0' && body[k] <= '7'; ++d, ++k) {
            v = v * 8 + static_cast<uint32_t>(body[k] - '0');
          }
          if (is_bytes) {
            if (v > 0xFF) Fail(lineno, "an octal escape past \\377 in a bytes literal");
            out.push_back(static_cast<char>(v));
          } else {
            AppendUtf8(v, &out);
          }
        } else {  // an unknown escape keeps its backslash, as Python does
          out.push_back('\\');
          k -= 1;
        }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The byte trie

// A trie of the token byte strings. Nodes are numbered in depth-first order; a node's edges lie
// contiguously (labels sorted); nodes with many children also get a dense 256-entry table.
class Trie {
 public:
  // tokens[k]: the bytes of token ids[k]; no two equal, none empty.
  Trie(const std::vector<std::string>& tokens, const std::vector<int32_t>& ids) {
    std::vector<uint32_t> order(tokens.size());
    std::iota(order.begin(), order.end(), 0u);
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return tokens[a] < tokens[b]; });
    sorted_.reserve(order.size());
    for (uint32_t k : order) sorted_.push_back({&tokens[k], ids[k]});
    nodes_.push_back({});
    Build(0, 0, sorted_.size(), 0);
    sorted_.clear();
    sorted_.shrink_to_fit();
  }

  // Greedy longest match from each position: the ids of `text`. Every single byte must be a token.
  void Encode(std::string_view text, std::vector<int32_t>* out) const {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    size_t pos = 0;
    while (pos < n) {
      uint32_t node = 0;
      int32_t best = -1;
      size_t best_len = 0;
      for (size_t j = pos; j < n;) {
        node = Child(node, s[j]);
        if (node == kNone) break;
        ++j;
        if (nodes_[node].token >= 0) {
          best = nodes_[node].token;
          best_len = j - pos;
        }
      }
      out->push_back(best);
      pos += best_len;
    }
  }

 private:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;
  static constexpr uint32_t kDenseFrom = 8;  // nodes with more children get a dense table
  struct Node {
    int32_t token = -1;
    uint32_t edges = 0;  // first edge
    uint32_t count = 0;  // number of edges
    uint32_t dense = kNone;  // offset into dense_ or kNone
  };
  struct Entry {
    const std::string* bytes;
    int32_t id;
  };

  uint32_t Child(uint32_t node, unsigned char c) const {
    const Node& nd = nodes_[node];
    if (nd.dense != kNone) return dense_[nd.dense + c];
    const unsigned char* labels = labels_.data() + nd.edges;
    for (uint32_t e = 0; e < nd.count; ++e) {
      if (labels[e] == c) return children_[nd.edges + e];
    }
    return kNone;
  }

  // Fills node `node` from sorted_[lo, hi), every entry of which has the node's prefix of `depth` bytes.
  void Build(uint32_t node, size_t lo, size_t hi, size_t depth) {
    if (lo < hi && sorted_[lo].bytes->size() == depth) {  // the prefix itself is a token: sorted first
      nodes_[node].token = sorted_[lo].id;
      ++lo;
    }
    // Groups of entries by their byte at `depth`.
    std::vector<std::pair<size_t, size_t>> groups;
    for (size_t a = lo; a < hi;) {
      const char c = (*sorted_[a].bytes)[depth];
      size_t b = a + 1;
      while (b < hi && (*sorted_[b].bytes)[depth] == c) ++b;
      groups.emplace_back(a, b);
      a = b;
    }
    const uint32_t first_edge = static_cast<uint32_t>(labels_.size());
    nodes_[node].edges = first_edge;
    nodes_[node].count = static_cast<uint32_t>(groups.size());
    for (const auto& g : groups) {
      labels_.push_back(static_cast<unsigned char>((*sorted_[g.first].bytes)[depth]));
      children_.push_back(kNone);
    }
    if (groups.size() > kDenseFrom) {
      nodes_[node].dense = static_cast<uint32_t>(dense_.size());
      dense_.resize(dense_.size() + 256, kNone);
    }
    for (size_t e = 0; e < groups.size(); ++e) {
      const uint32_t child = static_cast<uint32_t>(nodes_.size());
      nodes_.push_back({});
      children_[first_edge + e] = child;
      if (nodes_[node].dense != kNone) dense_[nodes_[node].dense + labels_[first_edge + e]] = child;
      Build(child, groups[e].first, groups[e].second, depth + 1);
    }
  }

  std::vector<Entry> sorted_;  // only while building
  std::vector<Node> nodes_;
  std::vector<unsigned char> labels_;
  std::vector<uint32_t> children_;
  std::vector<uint32_t> dense_;
};

// ---------------------------------------------------------------------------------------------
// The tokenizers

class ByteTokenizer final : public Tokenizer {
 public:
  explicit ByteTokenizer(int32_t vocab_size) : vocab_size_(vocab_size) {
    for (int b = 0; b < 256; ++b) bytes_[b] = static_cast<char>(b);
  }
  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string_view TokenBytes(int32_t id) const override {
    if (id < 0 || id >= 256) return {};
    return std::string_view(bytes_ + id, 1);
  }
  int32_t size() const override { return vocab_size_; }

 private:
  int32_t vocab_size_;
  char bytes_[256];
};

class WorldTokenizer final : public Tokenizer {
 public:
  WorldTokenizer(const std::string& vocab, int32_t vocab_size) : vocab_size_(vocab_size) {
    std::vector<std::string> tokens;
    std::vector<int32_t> ids;
    ReadVocab(vocab, &tokens, &ids);
    offsets_.assign(static_cast<size_t>(vocab_size) + 1, 0);
    std::vector<size_t> index_of(static_cast<size_t>(vocab_size), 0);
    for (size_t k = 0; k < ids.size(); ++k) index_of[static_cast<size_t>(ids[k])] = k + 1;
    for (int32_t id = 0; id < vocab_size; ++id) {
      const size_t k = index_of[static_cast<size_t>(id)];
      if (k) bytes_ += tokens[k - 1];
      offsets_[static_cast<size_t>(id) + 1] = bytes_.size();
    }
    trie_ = std::make_unique<Trie>(tokens, ids);
  }

  std::vector<int32_t> Encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 1);
    trie_->Encode(text, &ids);  // every single byte is a token: checked when read
    return ids;
  }
  std::string_view TokenBytes(int32_t id) const override {
    if (id < 0 || id >= vocab_size_) return {};
    const size_t a = offsets_[static_cast<size_t>(id)], b = offsets_[static_cast<size_t>(id) + 1];
    return std::string_view(bytes_).substr(a, b - a);
  }
  int32_t size() const override { return vocab_size_; }

 private:
  // Every line `<id> <literal> <byte length>`: the token bytes and ids, each id in [0, vocab_size_),
  // no id or byte string twice, none empty, and all 256 single bytes among them.
  void ReadVocab(const std::string& vocab, std::vector<std::string>* tokens, std::vector<int32_t>* ids) const {
    std::vector<size_t> line_of_id(static_cast<size_t>(vocab_size_), 0);
    size_t lineno = 0;
    for (size_t start = 0; start < vocab.size();) {
      size_t end = vocab.find('\n', start);
      if (end == std::string::npos) end = vocab.size();
      std::string_view line(vocab.data() + start, end - start);
      start = end + 1;
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const size_t first = line.find(' '), last = line.rfind(' ');
      if (first == std::string_view::npos || first == last) Fail(lineno, "expected `<id> <literal> <byte length>`");
      const int64_t id = ParseCount(line.substr(0, first));
      const int64_t length = ParseCount(line.substr(last + 1));
      if (id < 0) Fail(lineno, "the id is not a decimal number");
      if (length < 0) Fail(lineno, "the byte length is not a decimal number");
      if (id >= vocab_size_) {
        Fail(lineno, "id " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                         std::to_string(vocab_size_) + ")");
      }
      std::string bytes = ParseLiteral(line.substr(first + 1, last - first - 1), lineno);
      if (static_cast<int64_t>(bytes.size()) != length) {
        Fail(lineno, "the token has " + std::to_string(bytes.size()) + " bytes, the line says " + std::to_string(length));
      }
      if (bytes.empty()) Fail(lineno, "an empty token");
      size_t& seen = line_of_id[static_cast<size_t>(id)];
      if (seen) Fail(lineno, "id " + std::to_string(id) + " was already given on line " + std::to_string(seen));
      seen = lineno;
      tokens->push_back(std::move(bytes));
      ids->push_back(static_cast<int32_t>(id));
    }
    if (tokens->empty()) throw TokenizerError(std::string(kWorldName) + ": no tokens");
    // Duplicate byte strings would make the encoding ambiguous.
    std::vector<uint32_t> order(tokens->size());
    std::iota(order.begin(), order.end(), 0u);
    std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return (*tokens)[a] < (*tokens)[b]; });
    bool single[256] = {};
    for (size_t k = 0; k < order.size(); ++k) {
      const std::string& t = (*tokens)[order[k]];
      if (k && t == (*tokens)[order[k - 1]]) {
        const size_t a = line_of_id[static_cast<size_t>((*ids)[order[k - 1]])];
        const size_t b = line_of_id[static_cast<size_t>((*ids)[order[k]])];
        Fail(std::max(a, b), "the same bytes as line " + std::to_string(std::min(a, b)));
      }
      if (t.size() == 1) single[static_cast<unsigned char>(t[0])] = true;
    }
    for (int b = 0; b < 256; ++b) {
      if (!single[b]) {
        throw TokenizerError(std::string(kWorldName) + ": no token for the single byte " + std::to_string(b) +
                             " (every byte needs one)");
      }
    }
  }

  int32_t vocab_size_;
  std::string bytes_;            // every token's bytes, by id
  std::vector<size_t> offsets_;  // id -> [offsets_[id], offsets_[id + 1]) in bytes_
  std::unique_ptr<Trie> trie_;
};

}  // namespace

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& name, std::string vocab, int32_t vocab_size) {
  if (name == "bytes") {
    if (!vocab.empty()) throw TokenizerError("the bytes tokenizer takes no vocabulary file");
    if (vocab_size < 256) {
      throw TokenizerError("the bytes tokenizer needs a vocabulary of 256 ids, the model has " + std::to_string(vocab_size));
    }
    return std::make_unique<ByteTokenizer>(vocab_size);
  }
  if (name == "world") {
    if (vocab_size < 256) {
      throw TokenizerError("the world tokenizer needs a vocabulary of at least 256 ids, the model has " +
                           std::to_string(vocab_size));
    }
    return std::make_unique<WorldTokenizer>(vocab, vocab_size);
  }
  if (name == "20b") {
    throw TokenizerUnsupported(
        "the 20B tokenizer (RWKV-4 Pile models) is not in this runtime: tokenize in Python (rwkv-edge generate)");
  }
  std::string shown;  // the name comes from a manifest: printable ASCII only, in one line
  for (char c : name.substr(0, 40)) shown += (c >= 0x20 && c < 0x7F) ? c : '?';
  throw TokenizerUnsupported("unknown tokenizer \"" + shown + "\": this runtime has \"bytes\" and \"world\"");
}

int32_t EndOfText(const std::string& name) { return name == "world" || name == "20b" ? 0 : -1; }

}  // namespace rwkv_edge
