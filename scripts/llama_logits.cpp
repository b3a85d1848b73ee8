// llama.cpp's logits of a token sequence, one decode call per token (its recurrent step), for
// scripts/gguf_golden.py: every position's logits, n_vocab float32 each, appended to OUT.
//
//   g++ -O2 -std=c++17 llama_logits.cpp -o llama_logits -I LLAMA/include -I LLAMA/ggml/include \
//       -L LLAMA/build/bin -lllama -Wl,-rpath,LLAMA/build/bin
//   llama_logits MODEL.gguf OUT.f32 TOKEN,TOKEN,... [THREADS]
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

static void quiet(ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 TOKEN,TOKEN,... [THREADS]\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> tokens;
    std::stringstream list(argv[3]);
    for (std::string item; std::getline(list, item, ',');) tokens.push_back(std::atoi(item.c_str()));
    const int threads = argc > 4 ? std::atoi(argv[4]) : 1;

    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params params = llama_context_default_params();
    params.n_ctx = tokens.size() + 8;
    params.n_batch = params.n_ubatch = 1;
    params.n_threads = params.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, params);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * out = std::fopen(argv[2], "wb");
    if (!ctx || !out) {
        std::fprintf(stderr, "cannot start a context or open %s\n", argv[2]);
        return 1;
    }
    for (llama_token token : tokens) {
        if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
            std::fprintf(stderr, "decode failed at token %d\n", token);
            return 1;
        }
        std::fwrite(llama_get_logits_ith(ctx, -1), sizeof(float), n_vocab, out);
    }
    std::fclose(out);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
