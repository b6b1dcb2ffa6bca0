// Tests of the C++17 wrapper (bindings/cpp/bit_ttt.hpp). usage: test_wrapper MODEL_DIR
#include "bit_ttt.hpp"

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            std::exit(1);                                                        \
        }                                                                        \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    auto model = bit_ttt::Model::load(argv[1], 1);
    CHECK(model.info().num_layers == 2);

    try {
        bit_ttt::Model::load("/no/such/model");
        CHECK(false);
    } catch (const bit_ttt::Error &e) {
        CHECK(e.status() == BIT_TTT_IO);
        CHECK(std::string(e.what()).find("/no/such/model") != std::string::npos);
    }

    auto ids = model.tokenize("Hello, world! 日本語");
    CHECK(model.detokenize(ids) == "Hello, world! 日本語");
    CHECK(model.apply_chat_template({{"user", "Hi"}}) == "<|begin_of_text|>User: Hi<|eot_id|>Assistant: ");

    {
        bit_ttt::Session half(model, 128, 16, "f16");
        bit_ttt::GenerateOptions g;
        g.temperature = 0;
        g.max_tokens = 3;
        g.ignore_eos = true;
        CHECK(half.generate("It was", g).tokens.size() == 3);
        try {
            bit_ttt::Session bad(model, 128, 16, "q8_0");
            CHECK(false);
        } catch (const bit_ttt::Error &e) {
            CHECK(e.status() == BIT_TTT_INVALID_ARGUMENT);
            CHECK(std::string(e.what()).find("q8_0") != std::string::npos);
        }
    }

    bit_ttt::Session session(model, 256);
    bit_ttt::GenerateOptions o;
    o.temperature = 0;
    o.max_tokens = 12;
    o.ignore_eos = true;
    std::string streamed;
    o.on_text = [&](std::string_view piece) {
        streamed += piece;
        return true;
    };
    auto saved = session.save_state();
    auto r = session.generate("Once upon a time", o);
    CHECK(r.tokens.size() == 12 && r.stop_reason == BIT_TTT_STOP_MAX_TOKENS && r.text == streamed);

    session.load_state(saved);  // back to the empty context: the same greedy text again
    auto again = session.generate("Once upon a time", o);
    CHECK(again.tokens == r.tokens);

    // An exception thrown by the callback stops generation and reaches the caller.
    o.on_text = [](std::string_view) -> bool { throw std::runtime_error("from callback"); };
    try {
        session.generate(" more", o);
        CHECK(false);
    } catch (const std::runtime_error &e) {
        CHECK(std::string(e.what()) == "from callback");
    }

    o.on_text = nullptr;
    o.top_p = 3.0f;
    try {
        session.generate("x", o);
        CHECK(false);
    } catch (const bit_ttt::Error &e) {
        CHECK(e.status() == BIT_TTT_INVALID_ARGUMENT);
        CHECK(std::string(e.what()).find("top_p") != std::string::npos);
    }
    std::puts("test_wrapper: ok");
    return 0;
}
