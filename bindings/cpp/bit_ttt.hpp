// bit_ttt.hpp: header-only C++17 RAII wrapper over the C API in bit_ttt.h.
// Errors become bit_ttt::Error (status + the library's message); strings in are
// std::string_view, strings out std::string; streaming through std::function.
#pragma once

#include "bit_ttt.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bit_ttt {

/// A failed call: the status code and the library's message.
class Error : public std::runtime_error {
public:
    Error(bit_ttt_status status, const std::string &message)
        : std::runtime_error(std::string(bit_ttt_status_string(status)) + ": " + message), status_(status) {}
    bit_ttt_status status() const noexcept { return status_; }

private:
    bit_ttt_status status_;
};

namespace detail {
inline void check(bit_ttt_status s) {
    if (s != BIT_TTT_OK) throw Error(s, bit_ttt_last_error());
}
inline void check(bit_ttt_status s, const bit_ttt_session *session) {
    if (s != BIT_TTT_OK) throw Error(s, bit_ttt_session_last_error(session));
}
struct ModelDeleter {
    void operator()(bit_ttt_model *m) const noexcept { bit_ttt_model_free(m); }
};
struct SessionDeleter {
    void operator()(bit_ttt_session *s) const noexcept { bit_ttt_session_free(s); }
};
/// Calls fill(buf, cap, &len) twice if needed: once to learn the size, once to copy.
template <typename F> std::string text_out(F fill) {
    std::string out(256, '\0');
    size_t len = 0;
    bit_ttt_status s = fill(&out[0], out.size(), &len);
    if (s == BIT_TTT_BUFFER_TOO_SMALL) {
        out.assign(len + 1, '\0');
        s = fill(&out[0], out.size(), &len);
    }
    check(s);
    out.resize(len);
    return out;
}
}  // namespace detail

/// A chat message for Model::apply_chat_template.
struct Message {
    std::string role;
    std::string content;
};

/// A loaded model. Cheap to move; sessions keep the underlying model alive.
class Model {
public:
    /// Loads a Hugging Face model folder. `n_threads` 0 = one per core.
    static Model load(std::string_view path, uint32_t n_threads = 0) {
        bit_ttt_model_params p;
        detail::check(bit_ttt_model_params_init(&p));
        p.n_threads = n_threads;
        bit_ttt_model *m = nullptr;
        detail::check(bit_ttt_model_load(path.data(), path.size(), &p, &m));
        return Model(m);
    }

    bit_ttt_model_info info() const {
        bit_ttt_model_info i{};
        i.struct_size = sizeof i;
        detail::check(bit_ttt_model_get_info(get(), &i));
        return i;
    }

    std::vector<int32_t> tokenize(std::string_view text, bool add_special = true) const {
        size_t n = 0;
        bit_ttt_status s = bit_ttt_tokenize(get(), text.data(), text.size(), add_special, nullptr, 0, &n);
        std::vector<int32_t> ids(n);
        if (s == BIT_TTT_BUFFER_TOO_SMALL) {
            s = bit_ttt_tokenize(get(), text.data(), text.size(), add_special, ids.data(), ids.size(), &n);
        }
        detail::check(s);
        ids.resize(n);
        return ids;
    }

    std::string detokenize(const std::vector<int32_t> &ids) const {
        return detail::text_out([&](char *buf, size_t cap, size_t *len) {
            return bit_ttt_detokenize(get(), ids.data(), ids.size(), buf, cap, len);
        });
    }

    std::string apply_chat_template(const std::vector<Message> &messages, bool add_generation_prompt = true) const {
        std::vector<bit_ttt_chat_message> msgs;
        msgs.reserve(messages.size());
        for (const auto &m : messages) {
            msgs.push_back({{m.role.data(), m.role.size()}, {m.content.data(), m.content.size()}});
        }
        return detail::text_out([&](char *buf, size_t cap, size_t *len) {
            return bit_ttt_chat_apply_template(get(), msgs.data(), msgs.size(), add_generation_prompt, buf, cap, len);
        });
    }

    bit_ttt_model *get() const noexcept { return model_.get(); }

private:
    explicit Model(bit_ttt_model *m) : model_(m) {}
    std::unique_ptr<bit_ttt_model, detail::ModelDeleter> model_;
};

/// Sampling and stopping options for Session::generate.
struct GenerateOptions {
    int32_t max_tokens = 256;
    float temperature = 0.8f;
    int32_t top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    /// BIT_TTT_SEED_CONTINUE continues the session's random stream.
    uint64_t seed = BIT_TTT_SEED_CONTINUE;
    std::vector<std::string> stop;
    bool ignore_eos = false;
    /// Receives each piece of text; return false to stop.
    std::function<bool(std::string_view)> on_text;
};

/// What generate produced.
struct GenerateResult {
    std::string text;
    std::vector<int32_t> tokens;
    int32_t stop_reason = 0;
    uint32_t prompt_tokens = 0;
    double prefill_ms = 0;
    double decode_ms = 0;
};

/// A conversation over a model: KV cache, tokens, sampler. One call at a time.
class Session {
public:
    /// kv_cache: "f32" (exact; the default when empty) or "f16" (half the KV memory).
    explicit Session(const Model &model, uint32_t n_ctx = 0, uint32_t n_batch = 512,
                     std::string_view kv_cache = {}) {
        bit_ttt_session_params p;
        detail::check(bit_ttt_session_params_init(&p));
        p.n_ctx = n_ctx;
        p.n_batch = n_batch;
        p.kv_cache.ptr = kv_cache.data();
        p.kv_cache.len = kv_cache.size();
        bit_ttt_session *s = nullptr;
        detail::check(bit_ttt_session_new(model.get(), &p, &s));
        session_.reset(s);
    }

    GenerateResult generate(std::string_view prompt, const GenerateOptions &o = {}) {
        bit_ttt_generate_params p;
        detail::check(bit_ttt_generate_params_init(&p));
        p.max_tokens = o.max_tokens;
        p.temperature = o.temperature;
        p.top_k = o.top_k;
        p.top_p = o.top_p;
        p.min_p = o.min_p;
        p.repeat_penalty = o.repeat_penalty;
        p.presence_penalty = o.presence_penalty;
        p.frequency_penalty = o.frequency_penalty;
        p.seed = o.seed;
        p.ignore_eos = o.ignore_eos;
        std::vector<bit_ttt_string> stops;
        for (const auto &s : o.stop) stops.push_back({s.data(), s.size()});
        p.stop_strings = stops.data();
        p.n_stop_strings = stops.size();
        Stream stream{&o.on_text, nullptr};
        if (o.on_text) {
            p.on_token = &Session::trampoline;
            p.user_data = &stream;
        }
        bit_ttt_generate_result r{};
        r.struct_size = sizeof r;
        bit_ttt_status s = bit_ttt_generate(get(), prompt.data(), prompt.size(), &p, &r);
        if (stream.error) std::rethrow_exception(stream.error);
        detail::check(s, get());
        GenerateResult out;
        out.text = detail::text_out([&](char *buf, size_t cap, size_t *len) {
            return bit_ttt_session_last_text(get(), buf, cap, len);
        });
        out.tokens.resize(r.generated_tokens);
        size_t n = 0;
        detail::check(bit_ttt_session_last_tokens(get(), out.tokens.data(), out.tokens.size(), &n));
        out.stop_reason = r.stop_reason;
        out.prompt_tokens = r.prompt_tokens;
        out.prefill_ms = r.prefill_ms;
        out.decode_ms = r.decode_ms;
        return out;
    }

    /// Stops a running generate (from any thread).
    void cancel() const { detail::check(bit_ttt_session_cancel(get())); }
    void reset(uint32_t parts = BIT_TTT_RESET_CONTEXT) { detail::check(bit_ttt_session_reset(get(), parts), get()); }

    std::vector<uint8_t> save_state() const {
        size_t n = 0;
        bit_ttt_status s = bit_ttt_session_state_save(get(), nullptr, 0, &n);
        if (s != BIT_TTT_BUFFER_TOO_SMALL) detail::check(s, get());
        std::vector<uint8_t> blob(n);
        detail::check(bit_ttt_session_state_save(get(), blob.data(), blob.size(), &n), get());
        return blob;
    }
    void load_state(const std::vector<uint8_t> &blob) {
        detail::check(bit_ttt_session_state_load(get(), blob.data(), blob.size()), get());
    }

    bit_ttt_session *get() const noexcept { return session_.get(); }

private:
    struct Stream {
        const std::function<bool(std::string_view)> *on_text;
        std::exception_ptr error;
    };
    // C frames must not see C++ exceptions: keep it and stop generation.
    static int32_t trampoline(void *user_data, int32_t, const char *text, size_t len) {
        auto *s = static_cast<Stream *>(user_data);
        try {
            return (*s->on_text)(std::string_view(text, len)) ? 0 : 1;
        } catch (...) {
            s->error = std::current_exception();
            return 1;
        }
    }
    std::unique_ptr<bit_ttt_session, detail::SessionDeleter> session_;
};

}  // namespace bit_ttt
