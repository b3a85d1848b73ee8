#include "text_stream.h"

#include "utf8.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace rwkv_edge {
namespace {

// Length of the tail of `s` that is a proper prefix of a valid UTF-8 multi-byte character (0..3).
size_t IncompleteUtf8Tail(std::string_view s) {
  for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
    const auto lead = static_cast<unsigned char>(s[s.size() - k]);
    if ((lead & 0xC0) == 0x80) continue;  // a continuation byte: the lead lies further back
    const Utf8Lead character = ReadUtf8Lead(lead);
    if (character.length == 0) return 0;  // ASCII or a byte no character starts with
    if (k >= character.length) return 0;  // complete (or too long to be a prefix)
    if (k >= 2) {
      const auto second = static_cast<unsigned char>(s[s.size() - k + 1]);
      if (second < character.lo || second > character.hi) return 0;
    }
    return k;  // the later bytes are continuation bytes (checked by the loop)
  }
  return 0;
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const std::string& s : stops_) {
    if (s.empty()) throw std::invalid_argument("a stop sequence must not be empty");
  }
}

std::string TextStream::Push(std::string_view bytes, bool* stopped) {
  if (stopped_) {
    *stopped = true;
    return {};
  }
  pending_.append(bytes);
  size_t first = std::string::npos;  // the earliest stop sequence in what is held
  for (const std::string& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    *stopped = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  *stopped = false;
  // The longest tail that is a proper prefix of a stop sequence (a whole one would have been found).
  size_t hold = IncompleteUtf8Tail(pending_);
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k) {
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string TextStream::Flush() {
  std::string out = stopped_ ? std::string() : std::move(pending_);
  pending_.clear();
  return out;
}

}  // namespace rwkv_edge
