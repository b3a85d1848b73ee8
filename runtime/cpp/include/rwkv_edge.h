/* rwkv_edge.h: the C interface of the rwkv-edge runtime.
 *
 * Runs a TVM bundle made by `rwkv-edge compile` (a folder: manifest.json, model.so,
 * params.safetensors, and for text models the tokenizer's vocabulary) with no Python: open the
 * bundle (every file checked against its manifest before any code loads), tokenize, prefill a
 * prompt, step, sample, generate with a callback per token, and save or load the state.
 *
 * Objects:
 *   rwkv_edge_model    an opened bundle: its code, its mapped weights, its tokenizer. Read-only
 *                      once open; several sessions may share it (one thread per session at a time).
 *   rwkv_edge_session  one conversation: the recurrent state and the logits after the last token.
 *   rwkv_edge_sampler  how the next token is drawn from logits, with its random generator and the
 *                      counts its penalties use.
 *
 * Every function returns RWKV_EDGE_OK or an error code; rwkv_edge_last_error() then says what went
 * wrong in one line. The library prints nothing. Token ids are int32; logits and state are float32.
 */
#ifndef RWKV_EDGE_H_
#define RWKV_EDGE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define RWKV_EDGE_API __attribute__((visibility("default")))
#else
#define RWKV_EDGE_API
#endif

#define RWKV_EDGE_ABI_VERSION 1 /* bumped on any change to a signature or struct below */

typedef enum rwkv_edge_status {
  RWKV_EDGE_OK = 0,
  RWKV_EDGE_ERR_ARGUMENT = 1,    /* a bad argument: a null pointer, a token id outside the vocabulary,
                                    a sampler setting out of range, a buffer too small */
  RWKV_EDGE_ERR_BUNDLE = 2,      /* the bundle fails a check: missing, truncated, tampered, another
                                    target, a manifest that is not the pinned one */
  RWKV_EDGE_ERR_STATE = 3,       /* a state file or buffer of another format, model or shape */
  RWKV_EDGE_ERR_UNSUPPORTED = 4, /* not in this runtime: the 20B tokenizer, an image model, ... */
  RWKV_EDGE_ERR_IO = 5,          /* a file cannot be read or written */
  RWKV_EDGE_ERR_RUNTIME = 6,     /* TVM failed to load or run the model */
  RWKV_EDGE_ERR_MEMORY = 7       /* out of memory */
} rwkv_edge_status;

typedef struct rwkv_edge_model rwkv_edge_model;
typedef struct rwkv_edge_session rwkv_edge_session;
typedef struct rwkv_edge_sampler rwkv_edge_sampler;

/* The message of the last error on this thread (one line, no trailing newline); "" when none.
 * Valid until the next call into the library from this thread. */
RWKV_EDGE_API const char* rwkv_edge_last_error(void);

/* RWKV_EDGE_ABI_VERSION of the library actually loaded. */
RWKV_EDGE_API int rwkv_edge_abi_version(void);

/* ---------------------------------------------------------------------------------------------
 * The model */

typedef struct rwkv_edge_open_options {
  const char* expect_sha256; /* 64 hex digits manifest.json must hash to, or NULL: not pinned */
  int num_threads;           /* CPU threads a call uses; 0: TVM's default (TVM_NUM_THREADS, else
                                OMP_NUM_THREADS, else half the cores on x86-64). TVM keeps a pool per
                                calling thread: each call sizes the pool of the thread it runs on */
} rwkv_edge_open_options;

/* Default options: no pin, num_threads 0. */
RWKV_EDGE_API rwkv_edge_open_options rwkv_edge_default_open_options(void);

/* Open the bundle folder `bundle_dir`; `options` may be NULL (the defaults). */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_model_open(const char* bundle_dir, const rwkv_edge_open_options* options,
                                                    rwkv_edge_model** out);
RWKV_EDGE_API void rwkv_edge_model_close(rwkv_edge_model* model); /* NULL is fine */

RWKV_EDGE_API int32_t rwkv_edge_vocab_size(const rwkv_edge_model* model);
/* The manifest's architecture ("rwkv7", ...) and tokenizer name ("world", "bytes", "20b"). */
RWKV_EDGE_API const char* rwkv_edge_architecture(const rwkv_edge_model* model);
RWKV_EDGE_API const char* rwkv_edge_tokenizer_name(const rwkv_edge_model* model);
/* The tokenizer's end-of-text token ("world", "20b": 0), or -1 where it has none ("bytes"): the
 * `end_token` a generation that should stop where a document ends passes. */
RWKV_EDGE_API int32_t rwkv_edge_end_of_text(const rwkv_edge_model* model);

/* The state: `count` tensors in the manifest's order, `size` float32 values in all. */
RWKV_EDGE_API size_t rwkv_edge_state_count(const rwkv_edge_model* model);
RWKV_EDGE_API size_t rwkv_edge_state_size(const rwkv_edge_model* model);
/* Tensor `index`: its contract name ("state.3.wkv"), its shape without the batch axis (`*ndim` dims
 * at `*shape`, owned by the model). */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_state_tensor(const rwkv_edge_model* model, size_t index, const char** name,
                                                      const int64_t** shape, size_t* ndim);

/* ---------------------------------------------------------------------------------------------
 * The tokenizer the bundle carries ("bytes" and "world"; "20b" gives RWKV_EDGE_ERR_UNSUPPORTED) */

/* Token ids of `len` bytes of UTF-8 `text`. Writes at most `capacity` ids to `ids` and the number
 * the text takes to `*count`; where that exceeds `capacity`, RWKV_EDGE_ERR_ARGUMENT (call again
 * with a buffer of `*count`). `ids` may be NULL when `capacity` is 0. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_tokenize(const rwkv_edge_model* model, const char* text, size_t len,
                                                  int32_t* ids, size_t capacity, size_t* count);
/* The bytes of token `id` (possibly part of a UTF-8 character; empty for end-of-text): `*len` bytes
 * at `*bytes`, owned by the model. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_token_bytes(const rwkv_edge_model* model, int32_t id, const char** bytes,
                                                     size_t* len);

/* ---------------------------------------------------------------------------------------------
 * Sessions: prefill, step, logits, state */

/* A session starting from the model's initial state, with no logits yet. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_session_new(rwkv_edge_model* model, rwkv_edge_session** out);
RWKV_EDGE_API void rwkv_edge_session_free(rwkv_edge_session* session); /* NULL is fine */
/* Back to the model's initial state, no logits. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_session_reset(rwkv_edge_session* session);

/* Feed `count` (>= 1) tokens: whole chunks through the bundle's prefill function, the rest one step
 * each, as the Python TVM backend does. Leaves the logits after the last token. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_prefill(rwkv_edge_session* session, const int32_t* tokens, size_t count);
/* Feed one token. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_step(rwkv_edge_session* session, int32_t token);
/* The logits after the last token fed: vocab_size floats owned by the session, valid until its next
 * call. RWKV_EDGE_ERR_STATE where no token was fed since the session began or was reset (a state
 * set or loaded with its logits counts as fed). */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_logits(const rwkv_edge_session* session, const float** logits);

/* The state as rwkv_edge_state_size() floats, tensors in order, each C-contiguous. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_state_get(const rwkv_edge_session* session, float* values, size_t size);
/* Replace the state (`size` must be rwkv_edge_state_size()); the session then has no logits. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_state_set(rwkv_edge_session* session, const float* values, size_t size);

/* Write the state, and the logits where there are some, to `path` in the state file format
 * (safetensors, docs/native.md): written beside it and renamed into place. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_state_save(const rwkv_edge_session* session, const char* path);
/* Read a state file: every tensor of this model's state with its shape (RWKV_EDGE_ERR_STATE
 * otherwise, the session unchanged). Restores the logits where the file has them. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_state_load(rwkv_edge_session* session, const char* path);

/* ---------------------------------------------------------------------------------------------
 * The sampler (the same draws as rwkv_edge.runtime.Sampler for the same settings, seed and logits) */

typedef struct rwkv_edge_sampler_params {
  double temperature;       /* 0: greedy (argmax, lowest id on ties); otherwise > 0 */
  double top_p;             /* in (0, 1]: keep the fewest most likely tokens holding this much mass */
  int32_t top_k;            /* > 0: keep at most this many tokens first; 0: no limit */
  double presence_penalty;  /* subtracted from the logit of every token already generated */
  double frequency_penalty; /* times a token's (decayed) count, subtracted from its logit */
  double penalty_decay;     /* in (0, 1]: every count is multiplied by it at each token; 1: none */
  uint64_t seed;
} rwkv_edge_sampler_params;

/* temperature 1, top_p 0.85, top_k 0, no penalties, decay 1, seed 0. */
RWKV_EDGE_API rwkv_edge_sampler_params rwkv_edge_default_sampler_params(void);
RWKV_EDGE_API rwkv_edge_status rwkv_edge_sampler_new(const rwkv_edge_sampler_params* params, int32_t vocab_size,
                                                     rwkv_edge_sampler** out);
RWKV_EDGE_API void rwkv_edge_sampler_free(rwkv_edge_sampler* sampler); /* NULL is fine */
/* Draw one token from `vocab_size` logits and count it for the penalties. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_sample(rwkv_edge_sampler* sampler, const float* logits, int32_t* token);

/* ---------------------------------------------------------------------------------------------
 * Generation */

/* Called once per generated token with the text it releases (`len` bytes; 0 where held back: part
 * of a UTF-8 character, or text that may begin a stop sequence). Return 0 to go on, anything
 * else to stop after this token. Where held-back text remains at the end (none of it part of a
 * matched stop sequence), it is called once more with token -1 and that text (its return ignored). */
typedef int (*rwkv_edge_token_callback)(int32_t token, const char* text, size_t len, void* user_data);

typedef struct rwkv_edge_generate_options {
  int32_t max_tokens;             /* tokens to generate at most (>= 1) */
  const char* const* stop;        /* `stop_count` NUL-terminated stop sequences, or NULL */
  size_t stop_count;
  int32_t end_token;              /* a token that ends generation (not delivered); -1: none */
} rwkv_edge_generate_options;

/* max_tokens 200, no stop sequences, end_token -1. */
RWKV_EDGE_API rwkv_edge_generate_options rwkv_edge_default_generate_options(void);

/* Prefill the tokens of `prompt` (`prompt_len` bytes; may be 0 only where the session has logits,
 * e.g. after a state load or an earlier turn), then draw tokens until max_tokens, the end token, a
 * stop sequence (its text is not delivered) or the callback says stop. Every token drawn except the
 * end token is delivered and then fed, so the session ends holding the state and logits after the
 * last one: a later call (an empty prompt, or the next turn's) goes on from there. `callback` may be
 * NULL; `*generated` (may be NULL) receives the number of tokens delivered. */
RWKV_EDGE_API rwkv_edge_status rwkv_edge_generate(rwkv_edge_session* session, rwkv_edge_sampler* sampler,
                                                  const char* prompt, size_t prompt_len,
                                                  const rwkv_edge_generate_options* options,
                                                  rwkv_edge_token_callback callback, void* user_data,
                                                  int32_t* generated);

#ifdef __cplusplus
}
#endif

#endif /* RWKV_EDGE_H_ */
