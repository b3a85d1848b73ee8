// The C interface (include/rwkv_edge.h) over the model, state files, tokenizer, sampler and text
// stream. Every C++ exception stops here: it becomes a status code and a one-line message kept per
// thread for rwkv_edge_last_error(). Nothing is printed.

#include "rwkv_edge.h"

#include <tvm/ffi/error.h>

#include "bundle_reader.h"
#include "model.h"
#include "sampler.h"
#include "state_file.h"
#include "text_stream.h"
#include "tokenizer.h"

#include <cctype>
#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

struct rwkv_edge_model {
  std::unique_ptr<rwkv_edge::Model> model;
  std::unique_ptr<rwkv_edge::Tokenizer> tokenizer;  // null where the bundle's is not usable here:
  std::string no_tokenizer;                         // why (RWKV_EDGE_ERR_UNSUPPORTED)
};

struct rwkv_edge_session {
  explicit rwkv_edge_session(rwkv_edge_model* m) : model(m), session(*m->model) {}
  rwkv_edge_model* model;
  rwkv_edge::Session session;
};

struct rwkv_edge_sampler {
  rwkv_edge_sampler(const rwkv_edge::SamplerParams& params, int32_t vocab) : sampler(params, vocab), vocab_size(vocab) {}
  rwkv_edge::Sampler sampler;
  int32_t vocab_size;
};

namespace rwkv_edge {

const Model& ModelOf(const rwkv_edge_model* model) { return *model->model; }

namespace {

thread_local std::string last_error;

// A status with a message; thrown inside, returned at the boundary.
struct Failure : std::runtime_error {
  Failure(rwkv_edge_status s, const std::string& message) : std::runtime_error(message), status(s) {}
  rwkv_edge_status status;
};

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

rwkv_edge_status Fail(rwkv_edge_status status, const std::string& message) {
  last_error = FirstLine(message);
  return status;
}

// Runs `body`, mapping whatever it throws to a status and the thread's last error.
template <typename F>
rwkv_edge_status Guard(F&& body) {
  try {
    body();
    last_error.clear();
    return RWKV_EDGE_OK;
  } catch (const Failure& e) {
    return Fail(e.status, e.what());
  } catch (const BundleError& e) {
    return Fail(RWKV_EDGE_ERR_BUNDLE, e.what());
  } catch (const UnsupportedError& e) {
    return Fail(RWKV_EDGE_ERR_UNSUPPORTED, e.what());
  } catch (const TokenizerUnsupported& e) {
    return Fail(RWKV_EDGE_ERR_UNSUPPORTED, e.what());
  } catch (const StateError& e) {
    return Fail(RWKV_EDGE_ERR_STATE, e.what());
  } catch (const IoError& e) {
    return Fail(RWKV_EDGE_ERR_IO, e.what());
  } catch (const std::invalid_argument& e) {  // SamplerError, a token id, a stop sequence, ...
    return Fail(RWKV_EDGE_ERR_ARGUMENT, e.what());
  } catch (const ffi::Error& e) {
    return Fail(RWKV_EDGE_ERR_RUNTIME, "TVM error: " + std::string(e.kind()) + ": " + std::string(e.message()));
  } catch (const std::bad_alloc&) {
    return Fail(RWKV_EDGE_ERR_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return Fail(RWKV_EDGE_ERR_RUNTIME, e.what());
  } catch (...) {
    return Fail(RWKV_EDGE_ERR_RUNTIME, "an unknown error");
  }
}

template <typename T>
T* Require(T* pointer, const char* what) {
  if (pointer == nullptr) throw std::invalid_argument(std::string(what) + " is NULL");
  return pointer;
}

// The 64 hex digits of a sha256 (either case), lowercased as the bundle reader compares them.
std::string ParseSha256(const char* text) {
  std::string lower = text;
  if (lower.size() != 64 || lower.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
    throw std::invalid_argument("expect_sha256: expected the 64 hex digits of a sha256, got '" + FirstLine(lower) + "'");
  }
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return lower;
}

const Tokenizer& TokenizerOf(const rwkv_edge_model* model) {
  if (!model->tokenizer) throw Failure(RWKV_EDGE_ERR_UNSUPPORTED, model->no_tokenizer);
  return *model->tokenizer;
}

// The tokenizer the bundle names, or why there is none here (left in `model->no_tokenizer`).
void LoadBundleTokenizer(rwkv_edge_model* model, const std::string& dir, std::string vocabulary) {
  const Manifest& m = model->model->manifest();
  if (m.tokenizer == "world" && m.tokenizer_file.empty()) {
    model->no_tokenizer = dir + ": this bundle carries no tokenizer file: recompile it with this version of rwkv-edge";
    return;
  }
  try {
    model->tokenizer = LoadTokenizer(m.tokenizer, std::move(vocabulary), static_cast<int32_t>(m.vocab_size));
  } catch (const TokenizerUnsupported& e) {
    model->no_tokenizer = dir + ": " + e.what();
  } catch (const TokenizerError& e) {
    throw BundleError(dir + "/" + m.tokenizer_file + ": " + e.what());
  }
}

void CheckToken(const rwkv_edge_model* model, int32_t token) {
  const int64_t vocab = model->model->manifest().vocab_size;
  if (token < 0 || token >= vocab) {
    throw std::invalid_argument("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                                std::to_string(vocab) + ")");
  }
}

void Generate(rwkv_edge_session* s, rwkv_edge_sampler* sampler, const char* prompt, size_t prompt_len,
              const rwkv_edge_generate_options& options, rwkv_edge_token_callback callback, void* user_data,
              int32_t* generated) {
  const rwkv_edge_model* model = s->model;
  const int64_t vocab = model->model->manifest().vocab_size;
  if (options.max_tokens < 1) {
    throw std::invalid_argument("max_tokens must be >= 1, got " + std::to_string(options.max_tokens));
  }
  if (options.end_token != -1) CheckToken(model, options.end_token);
  if (sampler->vocab_size != vocab) {
    throw std::invalid_argument("the sampler was made for " + std::to_string(sampler->vocab_size) +
                                " logits, the model has " + std::to_string(vocab));
  }
  std::vector<std::string> stops;
  if (options.stop_count > 0) Require(options.stop, "stop");
  for (size_t i = 0; i < options.stop_count; ++i) stops.emplace_back(Require(options.stop[i], "a stop sequence"));
  TextStream stream(std::move(stops));
  const Tokenizer& tokenizer = TokenizerOf(model);
  if (prompt_len > 0) {
    std::vector<int32_t> ids = tokenizer.Encode(std::string_view(Require(prompt, "prompt"), prompt_len));
    if (!ids.empty()) s->session.Prefill(ids.data(), ids.size());
  }
  if (s->session.logits() == nullptr) {
    throw StateError("an empty prompt needs a session holding logits (after a token, a state load or an earlier turn)");
  }
  bool stopped = false;
  for (int32_t i = 0; i < options.max_tokens; ++i) {
    const int32_t token = sampler->sampler.Sample(s->session.logits());
    if (token == options.end_token) break;
    const std::string text = stream.Push(tokenizer.TokenBytes(token), &stopped);
    if (generated != nullptr) ++*generated;
    const int go_on = callback == nullptr ? 0 : callback(token, text.data(), text.size(), user_data);
    s->session.Step(token);
    if (stopped || go_on != 0) break;
  }
  if (!stopped) {
    const std::string rest = stream.Flush();
    if (!rest.empty() && callback != nullptr) callback(-1, rest.data(), rest.size(), user_data);
  }
}

}  // namespace
}  // namespace rwkv_edge

using rwkv_edge::Guard;
using rwkv_edge::Require;

extern "C" {

const char* rwkv_edge_last_error(void) { return rwkv_edge::last_error.c_str(); }

int rwkv_edge_abi_version(void) { return RWKV_EDGE_ABI_VERSION; }

rwkv_edge_open_options rwkv_edge_default_open_options(void) { return rwkv_edge_open_options{nullptr, 0}; }

rwkv_edge_status rwkv_edge_model_open(const char* bundle_dir, const rwkv_edge_open_options* options,
                                      rwkv_edge_model** out) {
  return Guard([&] {
    Require(out, "out");
    *out = nullptr;
    const std::string dir = Require(bundle_dir, "bundle_dir");
    const rwkv_edge_open_options opts = options ? *options : rwkv_edge_default_open_options();
    const std::string pin = opts.expect_sha256 ? rwkv_edge::ParseSha256(opts.expect_sha256) : "";
    if (opts.num_threads < 0) {
      throw std::invalid_argument("num_threads must be >= 0, got " + std::to_string(opts.num_threads));
    }
    rwkv_edge::OpenedBundle bundle = rwkv_edge::OpenBundle(dir, pin);
    std::string vocabulary = std::move(bundle.vocabulary);
    auto model = std::make_unique<rwkv_edge_model>();
    model->model = std::make_unique<rwkv_edge::Model>(std::move(bundle), opts.num_threads);
    rwkv_edge::LoadBundleTokenizer(model.get(), dir, std::move(vocabulary));
    *out = model.release();
  });
}

void rwkv_edge_model_close(rwkv_edge_model* model) { delete model; }

int32_t rwkv_edge_vocab_size(const rwkv_edge_model* model) {
  return model ? static_cast<int32_t>(model->model->manifest().vocab_size) : 0;
}

const char* rwkv_edge_architecture(const rwkv_edge_model* model) {
  return model ? model->model->manifest().architecture.c_str() : "";
}

const char* rwkv_edge_tokenizer_name(const rwkv_edge_model* model) {
  return model ? model->model->manifest().tokenizer.c_str() : "";
}

int32_t rwkv_edge_end_of_text(const rwkv_edge_model* model) {
  return model ? rwkv_edge::EndOfText(model->model->manifest().tokenizer) : -1;
}

size_t rwkv_edge_state_count(const rwkv_edge_model* model) { return model ? model->model->manifest().state.size() : 0; }

size_t rwkv_edge_state_size(const rwkv_edge_model* model) { return model ? model->model->state_size() : 0; }

rwkv_edge_status rwkv_edge_state_tensor(const rwkv_edge_model* model, size_t index, const char** name,
                                        const int64_t** shape, size_t* ndim) {
  return Guard([&] {
    const auto& state = Require(model, "model")->model->manifest().state;
    Require(name, "name"), Require(shape, "shape"), Require(ndim, "ndim");
    if (index >= state.size()) {
      throw std::invalid_argument("state tensor " + std::to_string(index) + ": the model has " +
                                  std::to_string(state.size()));
    }
    *name = state[index].input.c_str();
    *shape = state[index].shape.data();
    *ndim = state[index].shape.size();
  });
}

rwkv_edge_status rwkv_edge_tokenize(const rwkv_edge_model* model, const char* text, size_t len, int32_t* ids,
                                    size_t capacity, size_t* count) {
  return Guard([&] {
    const rwkv_edge::Tokenizer& tokenizer = rwkv_edge::TokenizerOf(Require(model, "model"));
    Require(count, "count");
    if (len > 0) Require(text, "text");
    if (capacity > 0) Require(ids, "ids");
    const std::vector<int32_t> got = len > 0 ? tokenizer.Encode(std::string_view(text, len)) : std::vector<int32_t>();
    *count = got.size();
    if (got.size() > capacity) {
      throw std::invalid_argument("the text takes " + std::to_string(got.size()) + " tokens, the buffer holds " +
                                  std::to_string(capacity));
    }
    std::copy(got.begin(), got.end(), ids);
  });
}

rwkv_edge_status rwkv_edge_token_bytes(const rwkv_edge_model* model, int32_t id, const char** bytes, size_t* len) {
  return Guard([&] {
    const rwkv_edge::Tokenizer& tokenizer = rwkv_edge::TokenizerOf(Require(model, "model"));
    Require(bytes, "bytes"), Require(len, "len");
    rwkv_edge::CheckToken(model, id);
    std::string_view text = tokenizer.TokenBytes(id);
    *bytes = text.data();
    *len = text.size();
  });
}

rwkv_edge_status rwkv_edge_session_new(rwkv_edge_model* model, rwkv_edge_session** out) {
  return Guard([&] {
    Require(out, "out");
    *out = nullptr;
    *out = new rwkv_edge_session(Require(model, "model"));
  });
}

void rwkv_edge_session_free(rwkv_edge_session* session) { delete session; }

rwkv_edge_status rwkv_edge_session_reset(rwkv_edge_session* session) {
  return Guard([&] { Require(session, "session")->session.Reset(); });
}

rwkv_edge_status rwkv_edge_prefill(rwkv_edge_session* session, const int32_t* tokens, size_t count) {
  return Guard([&] {
    Require(session, "session");
    if (count == 0) throw std::invalid_argument("prefill needs at least one token");
    session->session.Prefill(Require(tokens, "tokens"), count);
  });
}

rwkv_edge_status rwkv_edge_step(rwkv_edge_session* session, int32_t token) {
  return Guard([&] { Require(session, "session")->session.Step(token); });
}

rwkv_edge_status rwkv_edge_logits(const rwkv_edge_session* session, const float** logits) {
  return Guard([&] {
    Require(session, "session"), Require(logits, "logits");
    *logits = session->session.logits();
    if (*logits == nullptr) {
      throw rwkv_edge::StateError("no logits: no token was fed since the session began or was reset");
    }
  });
}

rwkv_edge_status rwkv_edge_state_get(const rwkv_edge_session* session, float* values, size_t size) {
  return Guard([&] {
    const size_t want = Require(session, "session")->model->model->state_size();
    if (size < want) {
      throw std::invalid_argument("the state takes " + std::to_string(want) + " floats, the buffer holds " +
                                  std::to_string(size));
    }
    session->session.GetState(Require(values, "values"));
  });
}

rwkv_edge_status rwkv_edge_state_set(rwkv_edge_session* session, const float* values, size_t size) {
  return Guard([&] {
    const size_t want = Require(session, "session")->model->model->state_size();
    if (size != want) {
      throw rwkv_edge::StateError("a state of " + std::to_string(size) + " floats; this model's takes " +
                                  std::to_string(want));
    }
    session->session.SetState(Require(values, "values"), nullptr);
  });
}

rwkv_edge_status rwkv_edge_state_save(const rwkv_edge_session* session, const char* path) {
  return Guard([&] {
    const rwkv_edge::Model& model = *Require(session, "session")->model->model;
    std::vector<float> state(model.state_size());
    session->session.GetState(state.data());
    rwkv_edge::SaveStateFile(Require(path, "path"), model.manifest(), state.data(), session->session.logits());
  });
}

rwkv_edge_status rwkv_edge_state_load(rwkv_edge_session* session, const char* path) {
  return Guard([&] {
    const rwkv_edge::Model& model = *Require(session, "session")->model->model;
    rwkv_edge::LoadedState loaded = rwkv_edge::LoadStateFile(Require(path, "path"), model.manifest());
    session->session.SetState(loaded.state.data(), loaded.logits.empty() ? nullptr : loaded.logits.data());
  });
}

rwkv_edge_sampler_params rwkv_edge_default_sampler_params(void) {
  return rwkv_edge_sampler_params{1.0, 0.85, 0, 0.0, 0.0, 1.0, 0};
}

rwkv_edge_status rwkv_edge_sampler_new(const rwkv_edge_sampler_params* params, int32_t vocab_size,
                                       rwkv_edge_sampler** out) {
  return Guard([&] {
    Require(out, "out");
    *out = nullptr;
    Require(params, "params");
    if (vocab_size < 1) throw std::invalid_argument("vocab_size must be >= 1, got " + std::to_string(vocab_size));
    rwkv_edge::SamplerParams p;
    p.temperature = params->temperature;
    p.top_p = params->top_p;
    p.top_k = params->top_k;
    p.presence_penalty = params->presence_penalty;
    p.frequency_penalty = params->frequency_penalty;
    p.penalty_decay = params->penalty_decay;
    p.seed = params->seed;
    *out = new rwkv_edge_sampler(p, vocab_size);
  });
}

void rwkv_edge_sampler_free(rwkv_edge_sampler* sampler) { delete sampler; }

rwkv_edge_status rwkv_edge_sample(rwkv_edge_sampler* sampler, const float* logits, int32_t* token) {
  return Guard([&] {
    Require(sampler, "sampler"), Require(token, "token");
    *token = sampler->sampler.Sample(Require(logits, "logits"));
  });
}

rwkv_edge_generate_options rwkv_edge_default_generate_options(void) {
  return rwkv_edge_generate_options{200, nullptr, 0, -1};
}

rwkv_edge_status rwkv_edge_generate(rwkv_edge_session* session, rwkv_edge_sampler* sampler, const char* prompt,
                                    size_t prompt_len, const rwkv_edge_generate_options* options,
                                    rwkv_edge_token_callback callback, void* user_data, int32_t* generated) {
  if (generated != nullptr) *generated = 0;
  return Guard([&] {
    rwkv_edge::Generate(Require(session, "session"), Require(sampler, "sampler"), prompt, prompt_len,
                        options ? *options : rwkv_edge_default_generate_options(), callback, user_data, generated);
  });
}

}  // extern "C"
