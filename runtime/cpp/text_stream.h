// What generation releases to its callback as tokens arrive: everything but (a) trailing bytes that
// begin a UTF-8 character not yet complete and (b) the longest tail that may begin a stop sequence.
// Once a stop sequence appears, the text before it is released and the rest dropped.

#ifndef RWKV_EDGE_TEXT_STREAM_H_
#define RWKV_EDGE_TEXT_STREAM_H_

#include <string>
#include <string_view>
#include <vector>

namespace rwkv_edge {

class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stops);  // std::invalid_argument for an empty stop sequence
  // Appends a token's bytes; returns the text released now. Sets *stopped once a stop sequence
  // matched: the text before its first occurrence is released, the stop sequence and anything after
  // dropped (and every later Push releases nothing).
  std::string Push(std::string_view bytes, bool* stopped);
  std::string Flush();  // everything still held (at the end of generation); "" once stopped

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // held back, not yet released
  bool stopped_ = false;
};

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_TEXT_STREAM_H_
