// The draw follows the spec's full stable sort without doing one where it can be avoided: the first
// ids in order (probability descending, id ascending: a strict total order, so any sort gives the
// stable sort's prefix) are sorted in a growing prefix, and the top-p cut is decided from bounds on
// the sorted-order total (see Draw). Where the bounds cannot decide, the whole order is sorted.

#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>

namespace rwkv_edge {
namespace {

std::string Show(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

void Check(bool ok, const std::string& what) {
  if (!ok) throw SamplerError(what);
}

constexpr size_t kFirstPrefix = 64;  // ids sorted first; doubled while the top-p cut lies past them

}  // namespace

Sampler::Sampler(const SamplerParams& params, int32_t vocab_size)
    : params_(params), vocab_size_(vocab_size), rng_(params.seed) {
  const SamplerParams& p = params;
  Check(vocab_size >= 1, "the vocabulary size must be >= 1, got " + std::to_string(vocab_size));
  Check(std::isfinite(p.temperature) && p.temperature >= 0, "temperature must be >= 0 and finite, got " + Show(p.temperature));
  Check(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1], got " + Show(p.top_p));
  Check(p.top_k >= 0, "top_k must be >= 0 (0: no limit), got " + std::to_string(p.top_k));
  Check(std::isfinite(p.presence_penalty), "presence_penalty must be finite, got " + Show(p.presence_penalty));
  Check(std::isfinite(p.frequency_penalty), "frequency_penalty must be finite, got " + Show(p.frequency_penalty));
  Check(p.penalty_decay > 0 && p.penalty_decay <= 1, "penalty_decay must be in (0, 1], got " + Show(p.penalty_decay));
  const auto v = static_cast<size_t>(vocab_size);
  counts_.assign(v, 0.0);
  l_.resize(v);
  order_.resize(v);
  cum_.resize(v);
}

double Sampler::Uniform() {
  rng_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = rng_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::Sample(const float* logits) {
  const size_t v = static_cast<size_t>(vocab_size_);
  const double presence = params_.presence_penalty, frequency = params_.frequency_penalty;
  const bool penalize = presence != 0 || frequency != 0;
  size_t best = 0;
  for (size_t i = 0; i < v; ++i) {
    double l = static_cast<double>(logits[i]);
    if (penalize) {
      l -= counts_[i] > 0 ? presence : 0.0;
      l -= counts_[i] * frequency;
    }
    if (std::isnan(l) || l == std::numeric_limits<double>::infinity()) {
      throw SamplerError("the logit of token " + std::to_string(i) + " is " + Show(l));
    }
    l_[i] = l;
    if (l > l_[best]) best = i;  // argmax, the lowest id on ties
  }
  if (l_[best] == -std::numeric_limits<double>::infinity()) throw SamplerError("every logit is -inf");
  const int32_t token = params_.temperature == 0 ? static_cast<int32_t>(best) : Draw();
  if (params_.penalty_decay != 1) {
    for (double& c : counts_) c *= params_.penalty_decay;
  }
  counts_[static_cast<size_t>(token)] += 1;
  return token;
}

// The spec's draw: p = exp((l - max) / T); order = ids by p descending, ties by id; cut to top_k; c =
// cumulative sums in that order; K = the fewest ids with c[K-1] >= top_p * c[last]; the token at the
// first c[j] > u * c[K-1], j < K (the last kept one where none).
//
// c[j] below the sorted prefix are exactly the full sort's. The total c[last] is a sequential sum of
// n >= 1 non-negative terms in an order known only after a full sort; any order's sum lies within
// gamma_{n-1} * S of the exact sum S (gamma_k = k u / (1 - k u), u = 2^-53), so the full sort's total T
// lies in [t_lo, t_hi] = [T'(1 - d), T'(1 + d)] for T' our own sum in another order and d = 4 n u
// (2 gamma, plus the rounding of those products). fl(x * y) is monotone in y, so:
//  - the threshold fl(top_p * T) lies in [thr_lo, thr_hi]: K is decided once the first c[j] >= thr_lo
//    is also the first c[j] >= thr_hi;
//  - with top_p = 1 the threshold is T itself and c[K-1] = T, so r = fl(u * T) lies in [r_lo, r_hi]:
//    the token is decided once the first c[j] > r_lo is also the first c[j] > r_hi, provided
//    r_hi < t_lo (then every c before it is < T, so it lies before K).
// Otherwise the prefix doubles; where the bounds cannot decide, the whole order is sorted.
int32_t Sampler::Draw() {
  const size_t v = static_cast<size_t>(vocab_size_);
  const double top_p = params_.top_p;
  double m = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < v; ++i) m = std::max(m, l_[i]);
  Entry* order = order_.data();
  for (size_t i = 0; i < v; ++i) order[i] = {std::exp((l_[i] - m) / params_.temperature), static_cast<int32_t>(i)};
  auto before = [](const Entry& a, const Entry& b) { return a.p > b.p || (a.p == b.p && a.id < b.id); };
  size_t n = v;
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < v) {
    n = static_cast<size_t>(params_.top_k);
    std::nth_element(order, order + n, order + v, before);  // the top_k ids first, in some order
  }
  double approx = 0;  // T'
  for (size_t j = 0; j < n; ++j) approx += order[j].p;
  const double d = 4.0 * static_cast<double>(n) * 0x1.0p-53;
  const double t_lo = approx * (1 - d), t_hi = approx * (1 + d);
  const double thr_lo = top_p * t_lo, thr_hi = top_p * t_hi;

  double* c = cum_.data();
  size_t sorted = 0;
  auto extend = [&](size_t to) {  // order[sorted, to) become the next ids of the sorted order
    if (to == n) {
      std::sort(order + sorted, order + n, before);
    } else if (to - sorted <= kFirstPrefix) {
      std::partial_sort(order + sorted, order + to, order + n, before);
    } else {
      std::nth_element(order + sorted, order + to, order + n, before);
      std::sort(order + sorted, order + to, before);
    }
    for (size_t j = sorted; j < to; ++j) c[j] = (j ? c[j - 1] : 0.0) + order[j].p;
    sorted = to;
  };
  const double u = Uniform();
  auto pick = [&](size_t cut) {  // the token once K = cut is known
    const double r = u * c[cut - 1];
    const size_t j = static_cast<size_t>(std::upper_bound(c, c + cut, r) - c);
    return order[std::min(j, cut - 1)].id;
  };
  extend(std::min(n, kFirstPrefix));
  for (;;) {
    if (sorted == n) {  // the whole order: the exact total
      const size_t cut = static_cast<size_t>(std::lower_bound(c, c + n, top_p * c[n - 1]) - c) + 1;
      return pick(std::min(cut, n));
    }
    bool undecided = false;
    if (c[sorted - 1] >= thr_lo) {
      const size_t lo = static_cast<size_t>(std::lower_bound(c, c + sorted, thr_lo) - c);
      const size_t hi = static_cast<size_t>(std::lower_bound(c, c + sorted, thr_hi) - c);
      if (lo == hi) return pick(lo + 1);
      undecided = true;
    }
    if (top_p == 1) {
      const double r_lo = u * t_lo, r_hi = u * t_hi;
      if (r_hi < t_lo && c[sorted - 1] > r_hi) {
        const size_t lo = static_cast<size_t>(std::upper_bound(c, c + sorted, r_lo) - c);
        const size_t hi = static_cast<size_t>(std::upper_bound(c, c + sorted, r_hi) - c);
        if (lo == hi) return order[hi].id;
        undecided = true;
      }
    }
    extend(undecided ? n : std::min(n, 2 * sorted));
  }
}

}  // namespace rwkv_edge
