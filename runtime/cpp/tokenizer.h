// Tokenizers of the runtime, with no TVM and no Python: "bytes" (ids 0..255 are the bytes) and
// "world" (RWKV World, rwkv_vocab_v20230424: greedy longest match over the bytes, exactly as the
// pyrwkv_tokenizer package encodes). "20b" (the RWKV-4 Pile BPE) is not here: TokenizerUnsupported.

#ifndef RWKV_EDGE_TOKENIZER_H_
#define RWKV_EDGE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace rwkv_edge {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> Encode(std::string_view text) const = 0;  // UTF-8 bytes -> ids
  virtual std::string_view TokenBytes(int32_t id) const = 0;             // id in [0, size()); "" for unnamed ids
  virtual int32_t size() const = 0;                                      // ids lie in [0, size())
};

struct TokenizerError : std::runtime_error {  // bad vocabulary bytes: one line naming the line number
  using std::runtime_error::runtime_error;
};
struct TokenizerUnsupported : std::runtime_error {  // a tokenizer this runtime does not have ("20b")
  using std::runtime_error::runtime_error;
};

// name: the manifest's tokenizer ("bytes", "world", "20b"); vocab: the bytes of the bundle's tokenizer
// file (empty for "bytes"); vocab_size: the model's embedding rows (ids past the vocabulary decode to "").
std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& name, std::string vocab, int32_t vocab_size);

// The end-of-text id of tokenizer `name` ("world" and "20b": 0), or -1 where it has none ("bytes": every
// id is a byte). The Python tokenizers' `end_of_text`.
int32_t EndOfText(const std::string& name);

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_TOKENIZER_H_
