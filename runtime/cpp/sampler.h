// The sampler of the runtime: greedy, temperature, top-k, top-p (nucleus), presence and frequency
// penalties with decay, and a SplitMix64 generator. It draws exactly what rwkv_edge.runtime.generation
// draws for the same settings, seed and logits (the algorithm: docs/native.md).

#ifndef RWKV_EDGE_SAMPLER_H_
#define RWKV_EDGE_SAMPLER_H_

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace rwkv_edge {

struct SamplerParams {
  double temperature = 1.0, top_p = 0.85;
  int32_t top_k = 0;
  double presence_penalty = 0, frequency_penalty = 0, penalty_decay = 1.0;
  uint64_t seed = 0;
};

// A setting out of range (the constructor), or logits a draw cannot use (NaN, +inf, all -inf).
struct SamplerError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

class Sampler {
 public:
  Sampler(const SamplerParams& params, int32_t vocab_size);  // SamplerError naming the bad setting
  int32_t Sample(const float* logits);  // vocab_size logits -> a token id; counts it for the penalties

 private:
  double Uniform();  // in [0, 1): the top 53 bits of the next SplitMix64 output
  int32_t Draw();    // temperature > 0: a token from l_

  SamplerParams params_;
  int32_t vocab_size_;
  uint64_t rng_;
  std::vector<double> counts_;  // decayed counts of the tokens drawn
  struct Entry {
    double p;  // probability (unnormalized)
    int32_t id;
  };
  std::vector<double> l_;       // penalized logits
  std::vector<Entry> order_;    // every id with its probability, a growing prefix of them sorted
  std::vector<double> cum_;     // cumulative sums over the sorted prefix
};

}  // namespace rwkv_edge

#endif  // RWKV_EDGE_SAMPLER_H_
