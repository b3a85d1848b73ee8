// rwkv-edge-runner: run an rwkv-edge TVM bundle (model.so + manifest.json) one token at a time, or
// a prompt through its prefill function.
//
//   rwkv-edge-runner BUNDLE_DIR --tokens 1,2,3 [--prefill] [--out OUTDIR] [--state-in DIR] [--repeat K]
//                    [--expect-sha256 HEX]
//
// A client of the C interface (rwkv_edge.h), linked statically. Checks the bundle first, as the Python reader does (bundle_reader.h: the manifest validated, every
// listed file's size and sha256; with --expect-sha256, the manifest's own sha256), then loads the
// very bytes of model.so it hashed (a Relax VM executable), maps its weights (the manifest's params
// file, params.safetensors: every tensor 64-byte aligned, passed to the library as views of the
// mapping, never copied), takes the state before the first token from its `initial_state()`
// function (or from DIR/state_{i}.npy with --state-in), feeds the tokens through
// `main(token, state..., weights...) -> (logits, state'...)`, each step on the state the last one
// returned, and writes into OUTDIR (default: the current directory)
//   logits.npy   (T, V) float32, the logits after each token
//   state_{i}.npy the final state tensors in manifest order, shaped as the model returns them
//   step_ms.npy  (T + K,) float64, the time of each call to `main`
// --prefill feeds the tokens as a prompt, as the Python TvmBackend does: whole chunks of the
// bundle's chunk size C through `prefill(tokens (1, C), state..., weights...)`, the rest through
// `main` (all of them where the bundle has no prefill function); logits.npy then holds (1, V), the
// logits after the last token, and step_ms.npy one time per call (prefill calls, then steps).
// --repeat K times K more greedy decode steps after the rollout (they change none of the files
// above except step_ms.npy). Needs only libtvm_runtime.so and libtvm_ffi.so.
// Exit status: 0 done, 1 TVM failed to load or run the model, 2 bad arguments, bundle (a tampered or
// partly copied one included) or input; every error is one line on stderr.

#include "rwkv_edge.h"

#include "client.h"

#include "model.h"
#include "npy.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {



using rwkv_edge::ApiError;
using rwkv_edge::Check;
using rwkv_edge::Handle;
using rwkv_edge::InputError;
using rwkv_edge::ParseInt;

struct Options {
  std::string bundle;
  std::string out = ".";
  std::string state_in;  // a directory of state_{i}.npy; empty: initial_state()
  std::vector<int64_t> tokens;
  int repeat = 0;
  bool prefill = false;  // the tokens are a prompt: whole chunks through `prefill`, the rest by steps
  std::string expect_sha256;  // the sha256 manifest.json must have (lowercase); empty: not pinned
};

// ---------------------------------------------------------------------------------------------
// command line

const char* kUsage =
    "usage: rwkv-edge-runner BUNDLE_DIR --tokens ID[,ID...] [--prefill] [--out OUTDIR] [--state-in DIR] [--repeat K] "
    "[--expect-sha256 HEX]";

// The 64 hex digits of a sha256 (either case), lowercased as the reader compares them.
std::string ParseSha256(const std::string& text) {
  if (text.size() != 64 || text.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
    throw InputError("--expect-sha256: expected the 64 hex digits of a sha256, got '" + text + "'");
  }
  std::string lower = text;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower;
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  bool have_tokens = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw InputError(arg + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (arg == "--tokens") {
      std::stringstream list(value());
      for (std::string item; std::getline(list, item, ',');) {
        opt.tokens.push_back(ParseInt(item, "--tokens", INT64_MIN, INT64_MAX));  // the vocabulary is checked later
      }
      have_tokens = true;
    } else if (arg == "--prefill") {
      opt.prefill = true;
    } else if (arg == "--out") {
      opt.out = value();
    } else if (arg == "--state-in") {
      opt.state_in = value();
    } else if (arg == "--repeat") {
      opt.repeat = static_cast<int>(ParseInt(value(), "--repeat", 0, 1000000));
    } else if (arg == "--expect-sha256") {
      opt.expect_sha256 = ParseSha256(value());
    } else {
      rwkv_edge::OtherArgument(arg, opt.bundle, kUsage);
    }
  }
  if (opt.bundle.empty()) throw InputError(std::string("no bundle directory given; ") + kUsage);
  if (!have_tokens || opt.tokens.empty()) throw InputError(std::string("no tokens given; ") + kUsage);
  return opt;
}

// ---------------------------------------------------------------------------------------------

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int64_t ArgMax(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

// This process's peak resident set since it started this program (VmHWM: counted afresh at exec, unlike
// the parent's getrusage, which also counts the forked image before the exec), 0 where /proc has none.
double PeakRssMib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024;  // "VmHWM:   12345 kB"
  }
  return 0;
}

int Run(const Options& opt) {
  rwkv_edge_open_options options = rwkv_edge_default_open_options();
  if (!opt.expect_sha256.empty()) options.expect_sha256 = opt.expect_sha256.c_str();
  Handle<rwkv_edge_model, rwkv_edge_model_close> model;
  Check(rwkv_edge_model_open(opt.bundle.c_str(), &options, &model.p));  // checks the bundle, then its interface()
  const int64_t V = rwkv_edge_vocab_size(model.p), T = static_cast<int64_t>(opt.tokens.size());
  std::vector<int32_t> tokens;
  for (size_t i = 0; i < opt.tokens.size(); ++i) {
    int64_t t = opt.tokens[i];
    if (t < 0 || t >= V) {  // the library checks too; this names the position in the command line
      throw InputError("token id " + std::to_string(t) + " (position " + std::to_string(i) + ") is outside the vocabulary [0, " +
                       std::to_string(V) + ")");
    }
    tokens.push_back(static_cast<int32_t>(t));
  }
  Handle<rwkv_edge_session, rwkv_edge_session_free> session;
  Check(rwkv_edge_session_new(model.p, &session.p));
  const size_t count = rwkv_edge_state_count(model.p);
  std::vector<std::vector<int64_t>> shapes;  // of each state tensor, batch axis 1 (as the model returns it)
  for (size_t i = 0; i < count; ++i) {
    const char* name = nullptr;
    const int64_t* shape = nullptr;
    size_t ndim = 0;
    Check(rwkv_edge_state_tensor(model.p, i, &name, &shape, &ndim));
    shapes.emplace_back(shape, shape + ndim);
    shapes.back().insert(shapes.back().begin(), 1);
  }
  if (!opt.state_in.empty()) {
    std::vector<float> state;
    for (size_t i = 0; i < count; ++i) {
      std::vector<int64_t> shape(shapes[i].begin() + 1, shapes[i].end());
      std::vector<float> data = rwkv_edge::ReadNpyF32(opt.state_in + "/state_" + std::to_string(i) + ".npy", shape);
      state.insert(state.end(), data.begin(), data.end());
    }
    Check(rwkv_edge_state_set(session.p, state.data(), state.size()));
  }

  const rwkv_edge::Manifest& manifest = rwkv_edge::ModelOf(model.p).manifest();
  const int64_t chunk = manifest.prefill.empty() ? 0 : manifest.chunk;
  // --prefill: whole chunks through prefill, the rest by steps, one row of logits (after the last token)
  const int64_t chunks = opt.prefill && chunk ? T / chunk : 0;
  const int64_t rows = opt.prefill ? 1 : T;
  std::vector<float> logits(static_cast<size_t>(rows * V));
  auto copy_logits = [&](float* row) {
    const float* got = nullptr;
    Check(rwkv_edge_logits(session.p, &got));
    std::copy(got, got + V, row);
  };
  std::vector<double> step_ms;
  using Clock = std::chrono::steady_clock;
  for (int64_t c = 0; c < chunks; ++c) {  // one prefill call each: exactly `chunk` tokens
    auto t0 = Clock::now();
    Check(rwkv_edge_prefill(session.p, tokens.data() + c * chunk, static_cast<size_t>(chunk)));
    step_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    copy_logits(logits.data());
    int64_t top = ArgMax(logits.data(), V);
    std::printf("prefill %lld: tokens %lld..%lld -> top-1 %lld (%.4f)  %.3f ms\n", static_cast<long long>(c),
                static_cast<long long>(c * chunk), static_cast<long long>((c + 1) * chunk - 1),
                static_cast<long long>(top), logits[top], step_ms.back());
  }
  for (int64_t i = chunks * chunk; i < T; ++i) {
    float* row = logits.data() + (opt.prefill ? 0 : i * V);
    auto t0 = Clock::now();
    Check(rwkv_edge_step(session.p, tokens[i]));
    step_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    copy_logits(row);
    int64_t top = ArgMax(row, V);
    std::printf("step %lld: token %lld -> top-1 %lld (%.4f)  %.3f ms\n", static_cast<long long>(i),
                static_cast<long long>(tokens[i]), static_cast<long long>(top), row[top], step_ms.back());
  }

  std::error_code ec;
  std::filesystem::create_directories(opt.out, ec);
  if (ec) throw InputError(opt.out + ": cannot create the output directory (" + ec.message() + ")");
  rwkv_edge::WriteNpy(opt.out + "/logits.npy", "<f4", logits.data(), logits.size() * sizeof(float), {rows, V});
  std::vector<float> state(rwkv_edge_state_size(model.p));
  Check(rwkv_edge_state_get(session.p, state.data(), state.size()));
  const float* at = state.data();
  for (size_t i = 0; i < count; ++i) {
    size_t n = 1;
    for (int64_t d : shapes[i]) n *= static_cast<size_t>(d);
    rwkv_edge::WriteNpy(opt.out + "/state_" + std::to_string(i) + ".npy", "<f4", at, n * sizeof(float), shapes[i]);
    at += n;
  }

  std::vector<float> scratch(static_cast<size_t>(V));
  int32_t token = static_cast<int32_t>(ArgMax(logits.data() + (rows - 1) * V, V));
  std::vector<double> decode_ms;
  for (int k = 0; k < opt.repeat; ++k) {  // greedy decode from the final state, timed only
    auto t0 = Clock::now();
    Check(rwkv_edge_step(session.p, token));
    decode_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    copy_logits(scratch.data());
    token = static_cast<int32_t>(ArgMax(scratch.data(), V));
  }
  std::vector<double> all_ms = step_ms;
  all_ms.insert(all_ms.end(), decode_ms.begin(), decode_ms.end());
  rwkv_edge::WriteNpy(opt.out + "/step_ms.npy", "<f8", all_ms.data(), all_ms.size() * sizeof(double),
                      {static_cast<int64_t>(all_ms.size())});

  bool timed_decode = !decode_ms.empty();
  if (opt.prefill) {
    double prompt_ms = 0;
    for (double ms : step_ms) prompt_ms += ms;
    std::printf("prompt: %lld tokens in %lld prefill calls of %lld and %lld steps, %.3f ms (%.1f tokens/s)\n",
                static_cast<long long>(T), static_cast<long long>(chunks), static_cast<long long>(chunk),
                static_cast<long long>(T - chunks * chunk), prompt_ms, T / prompt_ms * 1e3);
  }
  std::printf("done: %lld steps, vocab %lld, %zu state tensors, %s; median step %.3f ms over %zu %s\n",
              static_cast<long long>(T - chunks * chunk), static_cast<long long>(V), count, rwkv_edge::kHostTriple,
              Median(timed_decode ? decode_ms : step_ms), timed_decode ? decode_ms.size() : step_ms.size(),
              timed_decode ? "decode steps after the rollout" : "rollout calls (the first includes warm-up)");
  std::printf("peak RSS: %.1f MiB\n", PeakRssMib());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return rwkv_edge::RunProgram("rwkv-edge-runner", [&] { return Run(ParseArgs(argc, argv)); });
}
