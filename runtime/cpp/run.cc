// rwkv-edge-run: generate text with an rwkv-edge TVM bundle, through the C interface (rwkv_edge.h).
//
//   rwkv-edge-run BUNDLE --prompt TEXT [-n N] [--temperature T] [--top-p P] [--top-k K]
//                 [--presence-penalty A] [--frequency-penalty B] [--penalty-decay D] [--seed S]
//                 [--stop TEXT]... [--ignore-eos] [--chat] [--state-in FILE] [--state-out FILE]
//                 [--threads N] [--expect-sha256 HEX] [--ids-out FILE] [--encode FILE] [--stats]
//
// Streams the generated text to stdout as it comes (the prompt is not echoed); nothing else goes
// there. Generation stops at the tokenizer's end-of-text token (World: 0; --ignore-eos goes on past
// it). --chat reads user lines from stdin: each turn "User: LINE\n\nAssistant:" is generated
// until "\n\n", the state kept across turns, to the end of stdin (--prompt, if given, is prefilled
// first as a system text). --state-in starts from a state file (with its logits, an empty --prompt
// goes on from there), --state-out saves the state after generation. --ids-out writes the generated
// token ids, one per line; --encode FILE only tokenizes FILE and writes its ids to --ids-out.
// --stats prints the prompt and generation speed and the median step time to stderr.
// Exit status: 0 done, 1 the model failed to load or run, 2 bad arguments, bundle or input; every
// error is one line on stderr.

#include "rwkv_edge.h"

#include "client.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kTurnEnd = "\n\n";  // the end of a chat turn (world and bytes models)

const char* kUsage =
    "usage: rwkv-edge-run BUNDLE --prompt TEXT [-n N] [--temperature T] [--top-p P] [--top-k K] "
    "[--presence-penalty A] [--frequency-penalty B] [--penalty-decay D] [--seed S] [--stop TEXT]... [--ignore-eos] [--chat] "
    "[--state-in FILE] [--state-out FILE] [--threads N] [--expect-sha256 HEX] [--ids-out FILE] [--encode FILE] "
    "[--stats]";

using rwkv_edge::ApiError;
using rwkv_edge::Check;
using rwkv_edge::Handle;
using rwkv_edge::InputError;
using rwkv_edge::ParseInt;

struct Options {
  std::string bundle;
  std::optional<std::string> prompt;
  int32_t max_tokens = rwkv_edge_default_generate_options().max_tokens;
  rwkv_edge_sampler_params sampler = rwkv_edge_default_sampler_params();
  std::vector<std::string> stops;
  bool chat = false, stats = false, ignore_eos = false;
  std::string state_in, state_out, ids_out, encode, expect_sha256;
  int threads = 0;
};

double ParseDouble(const std::string& text, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(value)) {
    throw InputError(what + ": not a finite number: '" + text + "'");
  }
  return value;
}

uint64_t ParseSeed(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || text[0] == '+' || *end != '\0' || errno == ERANGE) {
    throw InputError("--seed: not an integer in [0, 2^64): '" + text + "'");
  }
  return value;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw InputError(arg + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (arg == "--prompt") {
      opt.prompt = value();
    } else if (arg == "-n") {
      opt.max_tokens = static_cast<int32_t>(ParseInt(value(), "-n", 1, 1 << 30));
    } else if (arg == "--temperature") {
      opt.sampler.temperature = ParseDouble(value(), arg);
    } else if (arg == "--top-p") {
      opt.sampler.top_p = ParseDouble(value(), arg);
    } else if (arg == "--top-k") {
      opt.sampler.top_k = static_cast<int32_t>(ParseInt(value(), arg, 0, INT32_MAX));
    } else if (arg == "--presence-penalty") {
      opt.sampler.presence_penalty = ParseDouble(value(), arg);
    } else if (arg == "--frequency-penalty") {
      opt.sampler.frequency_penalty = ParseDouble(value(), arg);
    } else if (arg == "--penalty-decay") {
      opt.sampler.penalty_decay = ParseDouble(value(), arg);
    } else if (arg == "--seed") {
      opt.sampler.seed = ParseSeed(value());
    } else if (arg == "--stop") {
      opt.stops.push_back(value());
      if (opt.stops.back().empty()) throw InputError("--stop: an empty stop sequence");
    } else if (arg == "--ignore-eos") {
      opt.ignore_eos = true;
    } else if (arg == "--chat") {
      opt.chat = true;
    } else if (arg == "--stats") {
      opt.stats = true;
    } else if (arg == "--state-in") {
      opt.state_in = value();
    } else if (arg == "--state-out") {
      opt.state_out = value();
    } else if (arg == "--ids-out") {
      opt.ids_out = value();
    } else if (arg == "--encode") {
      opt.encode = value();
    } else if (arg == "--threads") {
      opt.threads = static_cast<int>(ParseInt(value(), arg, 0, 1024));
    } else if (arg == "--expect-sha256") {
      opt.expect_sha256 = value();
    } else {
      rwkv_edge::OtherArgument(arg, opt.bundle, kUsage);
    }
  }
  if (opt.bundle.empty()) throw InputError(std::string("no bundle directory given; ") + kUsage);
  if (!opt.encode.empty()) {
    if (opt.ids_out.empty()) throw InputError("--encode writes the ids to --ids-out: give it");
  } else if (!opt.prompt.has_value() && !opt.chat) {
    throw InputError(std::string("no --prompt given; ") + kUsage);
  }
  return opt;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw InputError(path + ": cannot be read");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// One id per line, written beside `path` and renamed into place.
void WriteIds(const std::string& path, const std::vector<int32_t>& ids) {
  const std::string partial = path + ".partial";
  {
    std::ofstream f(partial, std::ios::binary | std::ios::trunc);
    for (int32_t id : ids) f << id << '\n';
    if (!f) throw InputError(path + ": cannot be written");
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) throw InputError(path + ": cannot be renamed into place");
}

std::vector<int32_t> Tokenize(rwkv_edge_model* model, const std::string& text) {
  size_t count = 0;
  rwkv_edge_status status = rwkv_edge_tokenize(model, text.data(), text.size(), nullptr, 0, &count);
  if (status != RWKV_EDGE_OK && !(status == RWKV_EDGE_ERR_ARGUMENT && count > 0)) Check(status);
  std::vector<int32_t> ids(count);
  Check(rwkv_edge_tokenize(model, text.data(), text.size(), ids.data(), ids.size(), &count));
  return ids;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

using Clock = std::chrono::steady_clock;

// What the token callback collects: the ids, the time of each delivery.
struct Collected {
  std::vector<int32_t> ids;
  std::vector<Clock::time_point> times;
};

int Deliver(int32_t token, const char* text, size_t len, void* user_data) {
  if (len > 0) {
    std::fwrite(text, 1, len, stdout);
    std::fflush(stdout);
  }
  if (token >= 0) {
    auto* out = static_cast<Collected*>(user_data);
    out->ids.push_back(token);
    out->times.push_back(Clock::now());
  }
  return 0;
}

class Generator {
 public:
  Generator(const Options& opt, rwkv_edge_model* model, rwkv_edge_session* session, rwkv_edge_sampler* sampler)
      : opt_(opt), model_(model), session_(session), sampler_(sampler) {}

  // Prefills `prompt` (if any), then generates with `stops`; returns the bytes of the tokens it
  // generated (all of them fed: the text the state now ends with).
  std::string Turn(const std::string& prompt, const std::vector<std::string>& stops) {
    auto t0 = Clock::now();
    if (!prompt.empty()) {
      std::vector<int32_t> ids = Tokenize(model_, prompt);
      if (!ids.empty()) Check(rwkv_edge_prefill(session_, ids.data(), ids.size()));
      prompt_tokens_ += ids.size();
    }
    auto t1 = Clock::now();
    prompt_ms_ += std::chrono::duration<double, std::milli>(t1 - t0).count();
    std::vector<const char*> stop_ptrs;
    for (const std::string& s : stops) stop_ptrs.push_back(s.c_str());
    rwkv_edge_generate_options options = rwkv_edge_default_generate_options();
    options.max_tokens = opt_.max_tokens;
    options.stop = stop_ptrs.empty() ? nullptr : stop_ptrs.data();
    options.stop_count = stop_ptrs.size();
    options.end_token = opt_.ignore_eos ? -1 : rwkv_edge_end_of_text(model_);
    const size_t before = collected_.ids.size();
    Check(rwkv_edge_generate(session_, sampler_, nullptr, 0, &options, Deliver, &collected_, nullptr));
    const auto t2 = Clock::now();
    generate_ms_ += std::chrono::duration<double, std::milli>(t2 - t1).count();
    for (size_t i = before + 1; i < collected_.times.size(); ++i) {  // a step and a draw each
      step_ms_.push_back(std::chrono::duration<double, std::milli>(collected_.times[i] - collected_.times[i - 1]).count());
    }
    std::string text;
    for (size_t i = before; i < collected_.ids.size(); ++i) {
      const char* bytes = nullptr;
      size_t len = 0;
      Check(rwkv_edge_token_bytes(model_, collected_.ids[i], &bytes, &len));
      text.append(bytes, len);
    }
    return text;
  }

  const std::vector<int32_t>& ids() const { return collected_.ids; }

  void PrintStats() const {
    const size_t n = collected_.ids.size();
    std::fprintf(stderr, "prompt: %zu tokens in %.1f ms (%.1f tokens/s); generated: %zu tokens in %.1f ms "
                 "(%.1f tokens/s); median step %.3f ms\n",
                 prompt_tokens_, prompt_ms_, prompt_ms_ > 0 ? prompt_tokens_ / prompt_ms_ * 1e3 : 0.0, n,
                 generate_ms_, generate_ms_ > 0 ? n / generate_ms_ * 1e3 : 0.0, Median(step_ms_));
  }

 private:
  const Options& opt_;
  rwkv_edge_model* model_;
  rwkv_edge_session* session_;
  rwkv_edge_sampler* sampler_;
  Collected collected_;
  std::vector<double> step_ms_;
  size_t prompt_tokens_ = 0;
  double prompt_ms_ = 0, generate_ms_ = 0;
};

int Run(const Options& opt) {
  rwkv_edge_open_options options = rwkv_edge_default_open_options();
  if (!opt.expect_sha256.empty()) options.expect_sha256 = opt.expect_sha256.c_str();
  options.num_threads = opt.threads;
  Handle<rwkv_edge_model, rwkv_edge_model_close> model;
  Check(rwkv_edge_model_open(opt.bundle.c_str(), &options, &model.p));
  if (!opt.encode.empty()) {
    WriteIds(opt.ids_out, Tokenize(model.p, ReadFile(opt.encode)));
    return 0;
  }
  Handle<rwkv_edge_session, rwkv_edge_session_free> session;
  Check(rwkv_edge_session_new(model.p, &session.p));
  if (!opt.state_in.empty()) Check(rwkv_edge_state_load(session.p, opt.state_in.c_str()));
  Handle<rwkv_edge_sampler, rwkv_edge_sampler_free> sampler;
  Check(rwkv_edge_sampler_new(&opt.sampler, rwkv_edge_vocab_size(model.p), &sampler.p));
  Generator generator(opt, model.p, session.p, sampler.p);
  if (!opt.chat) {
    generator.Turn(*opt.prompt, opt.stops);
  } else {
    std::string pending;  // what the state still lacks before the next "User:": the end of the last turn
    if (opt.prompt.has_value() && !opt.prompt->empty()) {
      std::vector<int32_t> ids = Tokenize(model.p, *opt.prompt);
      Check(rwkv_edge_prefill(session.p, ids.data(), ids.size()));
      pending = kTurnEnd;
    }
    std::vector<std::string> stops = opt.stops;
    stops.insert(stops.begin(), kTurnEnd);
    for (std::string line; std::getline(std::cin, line);) {
      const std::string reply = generator.Turn(pending + "User: " + line + "\n\nAssistant:", stops);
      std::fputs("\n", stdout);
      std::fflush(stdout);
      // a turn cut at -n, by end-of-text or by another stop sequence never wrote its "\n\n"
      pending = reply.find(kTurnEnd) != std::string::npos ? "" : kTurnEnd;
    }
  }
  if (!opt.state_out.empty()) Check(rwkv_edge_state_save(session.p, opt.state_out.c_str()));
  if (!opt.ids_out.empty()) WriteIds(opt.ids_out, generator.ids());
  if (opt.stats) generator.PrintStats();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return rwkv_edge::RunProgram("rwkv-edge-run", [&] { return Run(ParseArgs(argc, argv)); });
}
