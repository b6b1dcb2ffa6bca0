/*
 * Exercises every function of include/bit_ttt.h against the fixture models, including every
 * bad-argument path, cancellation from a second thread, BUSY, state round trips and non-ASCII
 * paths. Built and run by tests/c/run.sh (under AddressSanitizer/UBSan, then valgrind).
 *
 * usage: test_api MODEL_DIR OTHER_MODEL_DIR SCRATCH_DIR
 */
#define _POSIX_C_SOURCE 200809L
#include "bit_ttt.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static int g_checks = 0;

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        g_checks++;                                                                              \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: %s\n", __FILE__, __LINE__, \
                    #cond, bit_ttt_last_error());                                                \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

#define EXPECT(call, status)                                                                     \
    do {                                                                                         \
        bit_ttt_status s_ = (call);                                                              \
        g_checks++;                                                                              \
        if (s_ != (status)) {                                                                    \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s\n  last error: %s\n", __FILE__, \
                    __LINE__, #call, bit_ttt_status_string(s_), #status, bit_ttt_last_error());  \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

#define OK(call) EXPECT(call, BIT_TTT_OK)

static const char *g_model_dir, *g_other_dir, *g_scratch;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    CHECK(buf != NULL);
    CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
}

static const char *MODEL_FILES[] = {"config.json", "model.safetensors", "tokenizer.json",
                                    "tokenizer_config.json", "generation_config.json"};
#define N_MODEL_FILES (sizeof MODEL_FILES / sizeof MODEL_FILES[0])

/* Copies the fixture into `dir`, optionally cutting model.safetensors to `cut` bytes. */
static void copy_model(const char *dir, long cut) {
    CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST);
    for (size_t i = 0; i < N_MODEL_FILES; i++) {
        char src[4096], dst[4096];
        size_t len;
        snprintf(src, sizeof src, "%s/%s", g_model_dir, MODEL_FILES[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, MODEL_FILES[i]);
        char *data = read_file(src, &len);
        if (cut >= 0 && strcmp(MODEL_FILES[i], "model.safetensors") == 0) len = (size_t)cut;
        write_file(dst, data, len);
        free(data);
    }
}

static bit_ttt_model *load(const char *dir) {
    bit_ttt_model *m = NULL;
    OK(bit_ttt_model_load(dir, BIT_TTT_NUL_TERMINATED, NULL, &m));
    CHECK(m != NULL);
    return m;
}

static bit_ttt_session *new_session(const bit_ttt_model *m, uint32_t n_ctx, uint32_t n_batch) {
    bit_ttt_session_params sp;
    OK(bit_ttt_session_params_init(&sp));
    sp.n_ctx = n_ctx;
    sp.n_batch = n_batch;
    bit_ttt_session *s = NULL;
    OK(bit_ttt_session_new(m, &sp, &s));
    return s;
}

static bit_ttt_generate_params greedy(int32_t max_tokens) {
    bit_ttt_generate_params p;
    bit_ttt_generate_params_init(&p);
    p.temperature = 0.0f;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

static bit_ttt_generate_result new_result(void) {
    bit_ttt_generate_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    return r;
}

/* Generated tokens of the session's last generate, into `out` (at most cap). */
static size_t last_tokens(const bit_ttt_session *s, int32_t *out, size_t cap) {
    size_t n = 0;
    OK(bit_ttt_session_last_tokens(s, out, cap, &n));
    return n;
}

/* ---------------------------------------------------------------- version, system, errors */

static void test_version_and_system(void) {
    CHECK(bit_ttt_abi_version() == BIT_TTT_ABI_VERSION);
    CHECK(strcmp(bit_ttt_version_string(), BIT_TTT_VERSION) == 0);
    CHECK(strcmp(bit_ttt_status_string(BIT_TTT_BUSY), "BIT_TTT_BUSY") == 0);
    CHECK(strcmp(bit_ttt_status_string(BIT_TTT_PANIC), "BIT_TTT_PANIC") == 0);
    CHECK(strcmp(bit_ttt_status_string(12345), "BIT_TTT_UNKNOWN_STATUS") == 0);

    /* Struct layouts as the library was built, for bindings that declare them by hand. */
    CHECK(bit_ttt_struct_size("bit_ttt_adapt_params") == sizeof(bit_ttt_adapt_params));
    CHECK(bit_ttt_struct_size("bit_ttt_adapt_result") == sizeof(bit_ttt_adapt_result));
    CHECK(bit_ttt_struct_size("bit_ttt_generate_params") == sizeof(bit_ttt_generate_params));
    CHECK(bit_ttt_struct_size("bit_ttt_generate_result") == sizeof(bit_ttt_generate_result));
    CHECK(bit_ttt_struct_size("bit_ttt_model_params") == sizeof(bit_ttt_model_params));
    CHECK(bit_ttt_struct_size("bit_ttt_memory_file") == sizeof(bit_ttt_memory_file));
    CHECK(bit_ttt_struct_size("bit_ttt_model_info") == sizeof(bit_ttt_model_info));
    CHECK(bit_ttt_struct_size("bit_ttt_memory_estimate") == sizeof(bit_ttt_memory_estimate));
    CHECK(bit_ttt_struct_size("bit_ttt_session_params") == sizeof(bit_ttt_session_params));
    CHECK(bit_ttt_struct_size("bit_ttt_string") == sizeof(bit_ttt_string));
    CHECK(bit_ttt_struct_size("bit_ttt_chat_message") == sizeof(bit_ttt_chat_message));
    CHECK(bit_ttt_struct_size("bit_ttt_nothing") == 0 && bit_ttt_struct_size(NULL) == 0);

    size_t len = 0;
    EXPECT(bit_ttt_system_info(NULL, 0, &len), BIT_TTT_BUFFER_TOO_SMALL);
    CHECK(len > 10);
    char small[4];
    EXPECT(bit_ttt_system_info(small, sizeof small, &len), BIT_TTT_BUFFER_TOO_SMALL);
    char *info = malloc(len + 1);
    size_t len2 = 0;
    OK(bit_ttt_system_info(info, len + 1, &len2));
    CHECK(len2 == len && info[len] == '\0' && strlen(info) == len);
    CHECK(strstr(info, "ternary kernel:") != NULL && strstr(info, "cpu features:") != NULL);
    printf("system info:\n%s", info);
    free(info);
    EXPECT(bit_ttt_system_info(NULL, 0, NULL), BIT_TTT_NULL_POINTER);
    CHECK(strstr(bit_ttt_last_error(), "out_len") != NULL);
}

static int g_log_count = 0;
static char g_log_last[512];
static void on_log(void *user_data, int32_t level, const char *msg, size_t len) {
    CHECK(user_data == &g_log_count);
    CHECK(level >= BIT_TTT_LOG_ERROR && level <= BIT_TTT_LOG_DEBUG);
    CHECK(strlen(msg) == len);
    g_log_count++;
    snprintf(g_log_last, sizeof g_log_last, "%s", msg);
}

static void test_log_callback(void) {
    OK(bit_ttt_set_log_callback(on_log, &g_log_count));
    bit_ttt_model *m = load(g_model_dir);
    CHECK(g_log_count >= 1 && strstr(g_log_last, "loaded") != NULL);
    OK(bit_ttt_set_log_callback(NULL, NULL));
    int before = g_log_count;
    bit_ttt_model_free(load(g_model_dir));
    CHECK(g_log_count == before); /* silent again */
    bit_ttt_model_free(m);
}

/* ---------------------------------------------------------------- models */

static void test_model_errors(void) {
    bit_ttt_model *m = NULL;
    EXPECT(bit_ttt_model_params_init(NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_model_load(NULL, 5, NULL, &m), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, NULL, NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_model_load("", 0, NULL, &m), BIT_TTT_INVALID_ARGUMENT);
    EXPECT(bit_ttt_model_load("/no/such/model", BIT_TTT_NUL_TERMINATED, NULL, &m), BIT_TTT_IO);
    CHECK(strstr(bit_ttt_last_error(), "/no/such/model") != NULL);
    EXPECT(bit_ttt_model_load("\xff\xfe bad", BIT_TTT_NUL_TERMINATED, NULL, &m), BIT_TTT_INVALID_UTF8);
    bit_ttt_model_params mp;
    OK(bit_ttt_model_params_init(&mp));
    CHECK(mp.struct_size == sizeof mp);
    mp.struct_size = 3;
    EXPECT(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m), BIT_TTT_ABI_MISMATCH);
    CHECK(m == NULL); /* out-parameters are written only on success */

    /* A caller built against ABI 1 (no `head` field: struct_size 32) still loads, whatever
     * its tail padding holds, and gets the new field's default. */
    {
        struct {
            uint32_t struct_size, n_threads;
            bit_ttt_string kernel;
            uint8_t int8_head, padding[7];
        } v1;
        CHECK(sizeof v1 == 32 && sizeof(bit_ttt_model_params) > 32);
        memset(&v1, 0xAB, sizeof v1);
        v1.struct_size = sizeof v1;
        v1.n_threads = 1;
        v1.kernel.ptr = NULL;
        v1.kernel.len = 0;
        v1.int8_head = 1;
        OK(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, (const bit_ttt_model_params *)&v1, &m));
        bit_ttt_model_free(m);
        m = NULL;
    }
    /* The head format by name; an unknown one is named in the error. */
    OK(bit_ttt_model_params_init(&mp));
    mp.head.ptr = "int4";
    mp.head.len = BIT_TTT_NUL_TERMINATED;
    OK(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m));
    bit_ttt_model_free(m);
    m = NULL;
    mp.head.ptr = "int3";
    EXPECT(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m), BIT_TTT_INVALID_ARGUMENT);
    CHECK(strstr(bit_ttt_last_error(), "int3") != NULL);
    CHECK(m == NULL);

    /* The device by name and the layers to offload (ABI 4): "cpu" loads; an unknown device or
     * a negative layer count other than -1 is named in the error; "cuda" loads only where the
     * library has CUDA and finds a GPU, else it is refused saying why. */
    OK(bit_ttt_model_params_init(&mp));
    CHECK(mp.n_gpu_layers == -1 && mp.device.ptr == NULL);
    mp.device.ptr = "cpu";
    mp.device.len = BIT_TTT_NUL_TERMINATED;
    OK(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m));
    bit_ttt_model_free(m);
    m = NULL;
    mp.device.ptr = "tpu";
    EXPECT(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m), BIT_TTT_INVALID_ARGUMENT);
    CHECK(strstr(bit_ttt_last_error(), "tpu") != NULL);
    mp.device.ptr = "cpu";
    mp.n_gpu_layers = -2;
    EXPECT(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m), BIT_TTT_INVALID_ARGUMENT);
    CHECK(strstr(bit_ttt_last_error(), "n_gpu_layers") != NULL);
    mp.n_gpu_layers = -1;
    mp.device.ptr = "cuda";
    {
        bit_ttt_status st = bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, &mp, &m);
        if (st == BIT_TTT_OK) {
            bit_ttt_model_free(m);
            m = NULL;
        } else {
            CHECK(st == BIT_TTT_UNSUPPORTED);
            CHECK(strstr(bit_ttt_last_error(), "cuda") != NULL);
            CHECK(m == NULL);
        }
    }
    /* A caller built against ABI 2 or 3 (struct_size 48, no device fields) still loads. */
    {
        struct {
            uint32_t struct_size, n_threads;
            bit_ttt_string kernel;
            uint8_t int8_head, padding[7];
            bit_ttt_string head;
        } v2;
        CHECK(sizeof v2 == 48 && sizeof(bit_ttt_model_params) > 48);
        memset(&v2, 0, sizeof v2);
        v2.struct_size = sizeof v2;
        v2.n_threads = 1;
        OK(bit_ttt_model_load(g_model_dir, BIT_TTT_NUL_TERMINATED, (const bit_ttt_model_params *)&v2, &m));
        bit_ttt_model_free(m);
        m = NULL;
    }

    char dir[4096];
    snprintf(dir, sizeof dir, "%s/truncated", g_scratch);
    copy_model(dir, 1000);
    EXPECT(bit_ttt_model_load(dir, BIT_TTT_NUL_TERMINATED, NULL, &m), BIT_TTT_INVALID_MODEL);
    CHECK(strstr(bit_ttt_last_error(), "model.safetensors") != NULL);

    bit_ttt_model_info info;
    info.struct_size = sizeof info;
    EXPECT(bit_ttt_model_get_info(NULL, &info), BIT_TTT_NULL_POINTER);
    bit_ttt_model_free(NULL);
}

static void test_model_load_and_info(void) {
    /* A folder whose path is not ASCII. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/\xe3\x83\xa2\xe3\x83\x87\xe3\x83\xab-\xc3\xbc", g_scratch); /* モデル-ü */
    copy_model(dir, -1);
    bit_ttt_model_params mp;
    OK(bit_ttt_model_params_init(&mp));
    mp.n_threads = 1;
    bit_ttt_model *m = NULL;
    OK(bit_ttt_model_load(dir, strlen(dir), &mp, &m));

    bit_ttt_model_info info;
    info.struct_size = 7;
    EXPECT(bit_ttt_model_get_info(m, &info), BIT_TTT_ABI_MISMATCH);
    info.struct_size = sizeof info;
    OK(bit_ttt_model_get_info(m, &info));
    CHECK(info.family == BIT_TTT_FAMILY_BITNET);
    CHECK(info.hidden_size == 72 && info.num_layers == 2 && info.num_heads == 6 && info.num_kv_heads == 2);
    CHECK(info.vocab_size == 400 && info.n_threads == 1);
    CHECK(info.n_ternary_params > 0 && info.weight_bytes < info.fp16_bytes);

    /* The same model from memory has the same fingerprint. */
    bit_ttt_memory_file files[N_MODEL_FILES];
    char *blobs[N_MODEL_FILES];
    for (size_t i = 0; i < N_MODEL_FILES; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", g_model_dir, MODEL_FILES[i]);
        blobs[i] = read_file(path, &files[i].data_len);
        files[i].name = MODEL_FILES[i];
        files[i].name_len = BIT_TTT_NUL_TERMINATED;
        files[i].data = (const uint8_t *)blobs[i];
    }
    bit_ttt_model *mm = NULL;
    OK(bit_ttt_model_load_memory(files, N_MODEL_FILES, NULL, &mm));
    EXPECT(bit_ttt_model_load_memory(files, 1, NULL, &mm), BIT_TTT_IO); /* config.json only */
    EXPECT(bit_ttt_model_load_memory(NULL, 2, NULL, &mm), BIT_TTT_NULL_POINTER);
    for (size_t i = 0; i < N_MODEL_FILES; i++) free(blobs[i]); /* the library keeps its own copy */
    bit_ttt_model_info info2;
    info2.struct_size = sizeof info2;
    OK(bit_ttt_model_get_info(mm, &info2));
    CHECK(info2.fingerprint == info.fingerprint);
    bit_ttt_model_free(mm);

    /* Estimate from headers only, close to what was loaded. */
    bit_ttt_memory_estimate est;
    est.struct_size = sizeof est;
    OK(bit_ttt_estimate_memory(dir, BIT_TTT_NUL_TERMINATED, NULL, &est));
    double ratio = (double)est.weight_bytes / (double)info.weight_bytes;
    CHECK(ratio > 0.99 && ratio < 1.01);
    CHECK(est.total_bytes == est.weight_bytes + est.kv_cache_bytes + est.scratch_bytes);
    EXPECT(bit_ttt_estimate_memory("/no/such", BIT_TTT_NUL_TERMINATED, NULL, &est), BIT_TTT_IO);
    est.struct_size = 1;
    EXPECT(bit_ttt_estimate_memory(dir, BIT_TTT_NUL_TERMINATED, NULL, &est), BIT_TTT_ABI_MISMATCH);
    bit_ttt_model_free(m);
}

/* ---------------------------------------------------------------- text */

static void test_text(const bit_ttt_model *m) {
    const char *text = "Hello, world! 日本語 🙂";
    size_t n = 0;
    EXPECT(bit_ttt_tokenize(m, text, BIT_TTT_NUL_TERMINATED, 1, NULL, 0, &n), BIT_TTT_BUFFER_TOO_SMALL);
    CHECK(n > 3);
    int32_t *ids = malloc(n * sizeof *ids);
    size_t n2 = 0;
    OK(bit_ttt_tokenize(m, text, strlen(text), 1, ids, n, &n2));
    CHECK(n2 == n);
    size_t len = 0;
    EXPECT(bit_ttt_detokenize(m, ids, n, NULL, 0, &len), BIT_TTT_BUFFER_TOO_SMALL);
    CHECK(len == strlen(text));
    char buf[256];
    OK(bit_ttt_detokenize(m, ids, n, buf, sizeof buf, &len));
    CHECK(strcmp(buf, text) == 0); /* BOS is special and left out */
    free(ids);

    EXPECT(bit_ttt_tokenize(m, "\xc3\x28", 2, 1, NULL, 0, &n), BIT_TTT_INVALID_UTF8);
    EXPECT(bit_ttt_tokenize(NULL, "a", 1, 1, NULL, 0, &n), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_tokenize(m, "a", 1, 1, NULL, 0, NULL), BIT_TTT_NULL_POINTER);
    int32_t bad[2] = {1, -5};
    EXPECT(bit_ttt_detokenize(m, bad, 2, buf, sizeof buf, &len), BIT_TTT_INVALID_ARGUMENT);
    int32_t huge[1] = {1000000};
    EXPECT(bit_ttt_detokenize(m, huge, 1, buf, sizeof buf, &len), BIT_TTT_INVALID_ARGUMENT);
    OK(bit_ttt_detokenize(m, NULL, 0, buf, sizeof buf, &len));
    CHECK(len == 0 && buf[0] == '\0');

    bit_ttt_chat_message msgs[2] = {
        {{"system", BIT_TTT_NUL_TERMINATED}, {"Be brief.", BIT_TTT_NUL_TERMINATED}},
        {{"user", 4}, {"  Hi  ", 6}},
    };
    OK(bit_ttt_chat_apply_template(m, msgs, 2, 1, buf, sizeof buf, &len));
    CHECK(strcmp(buf, "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: ") == 0);
    msgs[1].content.ptr = "\xff";
    msgs[1].content.len = 1;
    EXPECT(bit_ttt_chat_apply_template(m, msgs, 2, 1, buf, sizeof buf, &len), BIT_TTT_INVALID_UTF8);
    EXPECT(bit_ttt_chat_apply_template(m, NULL, 2, 1, buf, sizeof buf, &len), BIT_TTT_NULL_POINTER);
}

/* ---------------------------------------------------------------- generate */

typedef struct {
    char text[8192];
    size_t len;
    int tokens;
    int stop_after; /* 0 = never */
    const bit_ttt_session *session;
    bit_ttt_status reentrant; /* status of a call made from inside the callback */
} collector;

static int32_t collect(void *user_data, int32_t token, const char *text, size_t len) {
    collector *c = user_data;
    CHECK(token >= 0 && strlen(text) == len);
    CHECK(c->len + len < sizeof c->text);
    memcpy(c->text + c->len, text, len + 1);
    c->len += len;
    c->tokens++;
    if (c->session && c->tokens == 1) c->reentrant = bit_ttt_session_reset(c->session, BIT_TTT_RESET_RNG);
    return c->stop_after && c->tokens >= c->stop_after;
}

static void test_generate(const bit_ttt_model *m) {
    bit_ttt_session *s = NULL;
    EXPECT(bit_ttt_session_new(NULL, NULL, &s), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_session_params_init(NULL), BIT_TTT_NULL_POINTER);
    bit_ttt_session_params sp;
    OK(bit_ttt_session_params_init(&sp));
    sp.n_batch = 0;
    EXPECT(bit_ttt_session_new(m, &sp, &s), BIT_TTT_INVALID_ARGUMENT);
    sp.struct_size = 8;
    EXPECT(bit_ttt_session_new(m, &sp, &s), BIT_TTT_ABI_MISMATCH);
    CHECK(s == NULL);

    /* The KV cache type by name (ABI 3); an unknown one is named in the error. */
    OK(bit_ttt_session_params_init(&sp));
    sp.kv_cache.ptr = "q4_0";
    sp.kv_cache.len = BIT_TTT_NUL_TERMINATED;
    EXPECT(bit_ttt_session_new(m, &sp, &s), BIT_TTT_INVALID_ARGUMENT);
    CHECK(strstr(bit_ttt_last_error(), "q4_0") != NULL && s == NULL);
    {
        /* An f16 cache generates; so does a caller built against ABI 2 (struct_size 24, no
         * kv_cache), which gets the f32 default. */
        struct {
            uint32_t struct_size, n_ctx, n_batch;
            uint64_t seed;
        } v2;
        CHECK(sizeof v2 == 24 && sizeof(bit_ttt_session_params) > 24);
        memset(&v2, 0, sizeof v2);
        v2.struct_size = sizeof v2;
        v2.n_ctx = 128;
        v2.n_batch = 16;
        bit_ttt_session *old = NULL, *half = NULL;
        OK(bit_ttt_session_new(m, (const bit_ttt_session_params *)&v2, &old));
        OK(bit_ttt_session_params_init(&sp));
        sp.n_ctx = 128;
        sp.kv_cache.ptr = "f16";
        sp.kv_cache.len = 3;
        OK(bit_ttt_session_new(m, &sp, &half));
        bit_ttt_generate_params g = greedy(4);
        bit_ttt_generate_result r1 = new_result(), r2 = new_result();
        OK(bit_ttt_generate(old, "Once upon a time", BIT_TTT_NUL_TERMINATED, &g, &r1));
        OK(bit_ttt_generate(half, "Once upon a time", BIT_TTT_NUL_TERMINATED, &g, &r2));
        CHECK(r1.generated_tokens == 4 && r2.generated_tokens == 4);
        bit_ttt_session_free(old);
        bit_ttt_session_free(half);
    }

    s = new_session(m, 256, 16);
    collector c;
    memset(&c, 0, sizeof c);
    c.session = s;
    bit_ttt_generate_params p = greedy(20);
    p.on_token = collect;
    p.user_data = &c;
    bit_ttt_generate_result r = new_result();
    OK(bit_ttt_generate(s, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p, &r));
    CHECK(r.stop_reason == BIT_TTT_STOP_MAX_TOKENS && r.generated_tokens == 20 && c.tokens == 20);
    CHECK(r.prompt_tokens > 0 && r.prefill_ms >= 0 && r.decode_ms >= 0);
    CHECK(c.reentrant == BIT_TTT_BUSY); /* the session is in use by this very call */
    char buf[8192];
    size_t len = 0;
    OK(bit_ttt_session_last_text(s, buf, sizeof buf, &len));
    CHECK(len == c.len && strcmp(buf, c.text) == 0);
    int32_t toks[64];
    CHECK(last_tokens(s, toks, 64) == 20);

    /* The same greedy prompt in a fresh session gives the same text (and NULL out_result is fine). */
    bit_ttt_session *s2 = new_session(m, 256, 3);
    bit_ttt_generate_params p2 = greedy(20);
    OK(bit_ttt_generate(s2, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p2, NULL));
    OK(bit_ttt_session_last_text(s2, buf, sizeof buf, &len));
    CHECK(strcmp(buf, c.text) == 0);

    /* A stop string from the middle of that text. */
    char stop[16];
    size_t at = c.len / 2;
    while (at < c.len && (c.text[at] & 0xC0) == 0x80) at++; /* start on a character */
    unsigned char lead = (unsigned char)c.text[at];
    int clen = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; /* one whole character */
    snprintf(stop, sizeof stop, "%.*s", clen, c.text + at);
    bit_ttt_string stops[1] = {{stop, BIT_TTT_NUL_TERMINATED}};
    p2.stop_strings = stops;
    p2.n_stop_strings = 1;
    OK(bit_ttt_session_reset(s2, BIT_TTT_RESET_ALL));
    r = new_result();
    OK(bit_ttt_generate(s2, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p2, &r));
    CHECK(r.stop_reason == BIT_TTT_STOP_STRING);
    OK(bit_ttt_session_last_text(s2, buf, sizeof buf, &len));
    CHECK(strstr(buf, stop) == NULL && strncmp(buf, c.text, len) == 0);

    /* Stop token, callback stop. */
    p2 = greedy(20);
    int32_t stop_tok[1] = {toks[4]};
    p2.stop_tokens = stop_tok;
    p2.n_stop_tokens = 1;
    OK(bit_ttt_session_reset(s2, BIT_TTT_RESET_CONTEXT));
    r = new_result();
    OK(bit_ttt_generate(s2, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p2, &r));
    CHECK(r.stop_reason == BIT_TTT_STOP_TOKEN && r.generated_tokens <= 5);
    collector c2;
    memset(&c2, 0, sizeof c2);
    c2.stop_after = 3;
    p2 = greedy(20);
    p2.on_token = collect;
    p2.user_data = &c2;
    r = new_result();
    OK(bit_ttt_generate(s2, " again", BIT_TTT_NUL_TERMINATED, &p2, &r));
    CHECK(r.stop_reason == BIT_TTT_STOP_CALLBACK && r.generated_tokens == 3);

    /* Bad arguments. */
    p2 = greedy(5);
    p2.top_p = 2.0f;
    EXPECT(bit_ttt_generate(s2, "x", 1, &p2, NULL), BIT_TTT_INVALID_ARGUMENT);
    CHECK(strstr(bit_ttt_last_error(), "top_p") != NULL);
    CHECK(strstr(bit_ttt_session_last_error(s2), "top_p") != NULL);
    p2 = greedy(-1);
    EXPECT(bit_ttt_generate(s2, "x", 1, &p2, NULL), BIT_TTT_INVALID_ARGUMENT);
    p2 = greedy(5);
    p2.struct_size = 12;
    EXPECT(bit_ttt_generate(s2, "x", 1, &p2, NULL), BIT_TTT_ABI_MISMATCH);
    p2 = greedy(5);
    p2.n_stop_strings = 2; /* with a NULL array */
    EXPECT(bit_ttt_generate(s2, "x", 1, &p2, NULL), BIT_TTT_NULL_POINTER);
    bit_ttt_generate_result bad = new_result();
    bad.struct_size = 4;
    EXPECT(bit_ttt_generate(s2, "x", 1, NULL, &bad), BIT_TTT_ABI_MISMATCH);
    EXPECT(bit_ttt_generate(s2, "\xe2\x82", 2, NULL, NULL), BIT_TTT_INVALID_UTF8);
    EXPECT(bit_ttt_generate(NULL, "x", 1, NULL, NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_session_reset(s2, 0), BIT_TTT_INVALID_ARGUMENT);
    EXPECT(bit_ttt_session_reset(s2, 8), BIT_TTT_INVALID_ARGUMENT);
    EXPECT(bit_ttt_session_reset(NULL, BIT_TTT_RESET_ALL), BIT_TTT_NULL_POINTER);

    /* A prompt longer than the context. */
    bit_ttt_session *tiny = new_session(m, 8, 4);
    EXPECT(bit_ttt_generate(tiny, "one two three four five six seven eight nine ten", BIT_TTT_NUL_TERMINATED,
                            NULL, NULL),
           BIT_TTT_CONTEXT_FULL);
    p2 = greedy(0);
    r = new_result();
    OK(bit_ttt_generate(tiny, "one", BIT_TTT_NUL_TERMINATED, &p2, &r));
    CHECK(r.stop_reason == BIT_TTT_STOP_CONTEXT_FULL);

    bit_ttt_session_free(tiny);
    bit_ttt_session_free(s2);
    bit_ttt_session_free(s);
    bit_ttt_session_free(NULL);
}

/* ---------------------------------------------------------------- threads: BUSY and cancel */

typedef struct {
    const bit_ttt_session *session;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stage; /* 0 idle, 1 generation running, 2 other thread done */
    bit_ttt_status busy_status;
    double cancel_at_ms;
    char last_error[256];
} shared_t;

static void wait_stage(shared_t *sh, int stage) {
    pthread_mutex_lock(&sh->mu);
    while (sh->stage < stage) pthread_cond_wait(&sh->cv, &sh->mu);
    pthread_mutex_unlock(&sh->mu);
}

static void set_stage(shared_t *sh, int stage) {
    pthread_mutex_lock(&sh->mu);
    sh->stage = stage;
    pthread_cond_broadcast(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
}

/* The other thread: while generation runs, a second call gets BUSY; then cancel. */
static void *busy_then_cancel(void *arg) {
    shared_t *sh = arg;
    wait_stage(sh, 1);
    sh->busy_status = bit_ttt_generate(sh->session, "x", 1, NULL, NULL);
    snprintf(sh->last_error, sizeof sh->last_error, "%s", bit_ttt_session_last_error(sh->session));
    sh->cancel_at_ms = now_ms();
    OK(bit_ttt_session_cancel(sh->session));
    set_stage(sh, 2);
    return NULL;
}

static int32_t signal_first_token(void *user_data, int32_t token, const char *text, size_t len) {
    (void)token, (void)text, (void)len;
    shared_t *sh = user_data;
    if (sh->stage == 0) {
        set_stage(sh, 1);
        wait_stage(sh, 2); /* hold the session until the other thread has cancelled */
    }
    return 0;
}

static void test_busy_and_cancel_during_decode(const bit_ttt_model *m) {
    shared_t sh;
    memset(&sh, 0, sizeof sh);
    pthread_mutex_init(&sh.mu, NULL);
    pthread_cond_init(&sh.cv, NULL);
    bit_ttt_session *s = new_session(m, 256, 16);
    sh.session = s;
    pthread_t t;
    CHECK(pthread_create(&t, NULL, busy_then_cancel, &sh) == 0);
    bit_ttt_generate_params p = greedy(0);
    p.on_token = signal_first_token;
    p.user_data = &sh;
    EXPECT(bit_ttt_generate(s, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p, NULL), BIT_TTT_CANCELLED);
    double latency = now_ms() - sh.cancel_at_ms;
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(sh.busy_status == BIT_TTT_BUSY);
    CHECK(strstr(sh.last_error, "in use") != NULL); /* per-session error, read from another thread */
    int32_t toks[8];
    CHECK(last_tokens(s, toks, 8) == 1); /* stopped within one token */
    printf("cancel latency during decode: %.3f ms\n", latency);
    /* The session works after a cancel. */
    bit_ttt_generate_params p2 = greedy(3);
    OK(bit_ttt_generate(s, " more", BIT_TTT_NUL_TERMINATED, &p2, NULL));
    bit_ttt_session_free(s);
    pthread_mutex_destroy(&sh.mu);
    pthread_cond_destroy(&sh.cv);
}

typedef struct {
    const bit_ttt_session *session;
    double cancel_at_ms;
} prefill_t;

/* Waits until the session is busy (generation started), then cancels. */
static void *cancel_when_busy(void *arg) {
    prefill_t *pf = arg;
    while (bit_ttt_session_reset(pf->session, BIT_TTT_RESET_RNG) != BIT_TTT_BUSY) {
    }
    pf->cancel_at_ms = now_ms();
    OK(bit_ttt_session_cancel(pf->session));
    return NULL;
}

static void test_cancel_during_prefill(const bit_ttt_model *m) {
    char prompt[4096] = "";
    for (int i = 0; i < 110; i++) strcat(prompt, " fox"); /* about 220 tokens */
    bit_ttt_session *s = new_session(m, 256, 1); /* one token per chunk: a long prefill */
    prefill_t pf = {s, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, cancel_when_busy, &pf) == 0);
    bit_ttt_generate_params p = greedy(5);
    EXPECT(bit_ttt_generate(s, prompt, BIT_TTT_NUL_TERMINATED, &p, NULL), BIT_TTT_CANCELLED);
    double latency = now_ms() - pf.cancel_at_ms;
    CHECK(pthread_join(t, NULL) == 0);
    int32_t toks[8];
    size_t n = last_tokens(s, toks, 8);
    printf("cancel latency during prefill: %.3f ms (%zu tokens generated)\n", latency, n);
    CHECK(n == 0);
    bit_ttt_session_free(s);
}

/* ---------------------------------------------------------------- lifetime, state, async */

static void test_model_outlives_free(void) {
    bit_ttt_model *m = load(g_model_dir);
    bit_ttt_session *s = new_session(m, 64, 8);
    bit_ttt_model_free(m); /* the session still holds the model */
    bit_ttt_generate_params p = greedy(4);
    bit_ttt_generate_result r = new_result();
    OK(bit_ttt_generate(s, "Hello", BIT_TTT_NUL_TERMINATED, &p, &r));
    CHECK(r.generated_tokens == 4);
    bit_ttt_session_free(s);
}

static void test_state(const bit_ttt_model *m) {
    bit_ttt_generate_params p;
    bit_ttt_generate_params_init(&p);
    p.temperature = 1.0f;
    p.max_tokens = 6;
    p.ignore_eos = 1;
    bit_ttt_session *s = new_session(m, 256, 16);
    OK(bit_ttt_generate(s, "The quick brown fox", BIT_TTT_NUL_TERMINATED, &p, NULL));

    size_t need = 0;
    EXPECT(bit_ttt_session_state_save(s, NULL, 0, &need), BIT_TTT_BUFFER_TOO_SMALL);
    CHECK(need > 100);
    uint8_t *blob = malloc(need);
    size_t len = 0;
    OK(bit_ttt_session_state_save(s, blob, need, &len));
    CHECK(len == need);
    char path[4096];
    snprintf(path, sizeof path, "%s/\xc3\xa9tat.bin", g_scratch); /* état.bin */
    OK(bit_ttt_session_state_save_file(s, path, BIT_TTT_NUL_TERMINATED));

    int32_t want[16], got[16];
    OK(bit_ttt_generate(s, " and then", BIT_TTT_NUL_TERMINATED, &p, NULL));
    size_t n_want = last_tokens(s, want, 16);

    bit_ttt_session *r1 = new_session(m, 256, 16);
    OK(bit_ttt_session_state_load(r1, blob, len));
    OK(bit_ttt_generate(r1, " and then", BIT_TTT_NUL_TERMINATED, &p, NULL));
    CHECK(last_tokens(r1, got, 16) == n_want && memcmp(got, want, n_want * sizeof *got) == 0);

    bit_ttt_session *r2 = new_session(m, 256, 16);
    OK(bit_ttt_session_state_load_file(r2, path, BIT_TTT_NUL_TERMINATED));
    OK(bit_ttt_generate(r2, " and then", BIT_TTT_NUL_TERMINATED, &p, NULL));
    CHECK(last_tokens(r2, got, 16) == n_want && memcmp(got, want, n_want * sizeof *got) == 0);

    /* Corrupt and foreign blobs are refused; the session is unchanged. */
    blob[len / 2] ^= 0x10;
    EXPECT(bit_ttt_session_state_load(r1, blob, len), BIT_TTT_INCOMPATIBLE_STATE);
    EXPECT(bit_ttt_session_state_load(r1, blob, 10), BIT_TTT_INCOMPATIBLE_STATE);
    EXPECT(bit_ttt_session_state_load(r1, NULL, 10), BIT_TTT_NULL_POINTER);
    blob[len / 2] ^= 0x10;
    bit_ttt_model *other = load(g_other_dir);
    bit_ttt_session *f = new_session(other, 256, 16);
    bit_ttt_generate_params g = greedy(4);
    OK(bit_ttt_generate(f, "Hello", BIT_TTT_NUL_TERMINATED, &g, NULL));
    EXPECT(bit_ttt_session_state_load(f, blob, len), BIT_TTT_INCOMPATIBLE_STATE);
    CHECK(strstr(bit_ttt_last_error(), "another model") != NULL);
    OK(bit_ttt_generate(f, " world", BIT_TTT_NUL_TERMINATED, &g, NULL));
    last_tokens(f, want, 16);
    bit_ttt_session *f2 = new_session(other, 256, 16);
    OK(bit_ttt_generate(f2, "Hello", BIT_TTT_NUL_TERMINATED, &g, NULL));
    OK(bit_ttt_generate(f2, " world", BIT_TTT_NUL_TERMINATED, &g, NULL));
    CHECK(last_tokens(f2, got, 16) == 4 && memcmp(got, want, 4 * sizeof *got) == 0);
    EXPECT(bit_ttt_session_state_load_file(f, "/no/such/state", BIT_TTT_NUL_TERMINATED), BIT_TTT_IO);
    EXPECT(bit_ttt_session_state_save_file(f, "/no/such/dir/state", BIT_TTT_NUL_TERMINATED), BIT_TTT_IO);

    bit_ttt_session_free(f2);
    bit_ttt_session_free(f);
    bit_ttt_model_free(other);
    bit_ttt_session_free(r2);
    bit_ttt_session_free(r1);
    bit_ttt_session_free(s);
    free(blob);
}

static int32_t never(void *u, int32_t t, const char *x, size_t n) {
    (void)u, (void)t, (void)x, (void)n;
    return 0;
}

static void test_async(const bit_ttt_model *m) {
    bit_ttt_session *s = new_session(m, 256, 16);
    bit_ttt_generate_params p = greedy(40);
    bit_ttt_job *job = NULL;
    OK(bit_ttt_generate_async(s, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p, &job));
    char text[8192] = "";
    size_t total = 0;
    uint8_t done = 0;
    char small[2];
    while (!done) {
        size_t len = 0;
        bit_ttt_status st = bit_ttt_job_poll(job, small, sizeof small, &len, &done);
        if (st == BIT_TTT_BUFFER_TOO_SMALL) {
            /* Take it with a buffer of the size asked for. The job keeps producing between the
               two calls, so the size can grow again: retry until one call takes all of it. */
            char *buf = NULL;
            do {
                char *grown = realloc(buf, len + 1);
                CHECK(grown != NULL);
                buf = grown;
                st = bit_ttt_job_poll(job, buf, len + 1, &len, &done);
            } while (st == BIT_TTT_BUFFER_TOO_SMALL);
            OK(st);
            memcpy(text + total, buf, len + 1);
            free(buf);
        } else {
            CHECK(st == BIT_TTT_OK);
            memcpy(text + total, small, len + 1);
        }
        total += len;
        if (!done && len == 0) { /* a host polls from its frame loop; here, every millisecond */
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    bit_ttt_generate_result r = new_result();
    OK(bit_ttt_job_result(job, &r));
    CHECK(r.generated_tokens == 40 && r.stop_reason == BIT_TTT_STOP_MAX_TOKENS);
    bit_ttt_job_free(job);

    /* The same text as the synchronous call. */
    bit_ttt_session *s2 = new_session(m, 256, 16);
    OK(bit_ttt_generate(s2, "Once upon a time", BIT_TTT_NUL_TERMINATED, &p, NULL));
    char sync_text[8192];
    size_t len = 0;
    OK(bit_ttt_session_last_text(s2, sync_text, sizeof sync_text, &len));
    CHECK(strcmp(text, sync_text) == 0);

    /* A long job: the session is BUSY while it runs; cancel; wait. */
    OK(bit_ttt_session_reset(s, BIT_TTT_RESET_ALL));
    p = greedy(0);
    OK(bit_ttt_generate_async(s, "Once", BIT_TTT_NUL_TERMINATED, &p, &job));
    bit_ttt_status st = bit_ttt_generate(s, "x", 1, NULL, NULL);
    OK(bit_ttt_job_wait(job, 0, &done));
    CHECK(st == BIT_TTT_BUSY || done);
    bit_ttt_job *second = NULL;
    st = bit_ttt_generate_async(s, "x", 1, &p, &second);
    CHECK(st == BIT_TTT_BUSY || st == BIT_TTT_OK);
    if (st == BIT_TTT_OK) {
        OK(bit_ttt_job_wait(second, -1, &done));
        bit_ttt_job_free(second);
    }
    OK(bit_ttt_job_cancel(job));
    OK(bit_ttt_job_wait(job, -1, &done));
    CHECK(done == 1);
    st = bit_ttt_job_result(job, NULL);
    CHECK(st == BIT_TTT_CANCELLED || st == BIT_TTT_OK);
    bit_ttt_job_free(job);

    /* Bad arguments. */
    p = greedy(4);
    p.on_token = never;
    EXPECT(bit_ttt_generate_async(s, "x", 1, &p, &job), BIT_TTT_INVALID_ARGUMENT);
    EXPECT(bit_ttt_generate_async(s, "x", 1, NULL, NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_job_poll(NULL, small, 2, &len, &done), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_job_wait(NULL, 0, &done), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_job_cancel(NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_job_result(NULL, NULL), BIT_TTT_NULL_POINTER);
    bit_ttt_job_free(NULL);

    /* Freeing a running job cancels it. */
    p = greedy(0);
    OK(bit_ttt_generate_async(s2, " more", BIT_TTT_NUL_TERMINATED, &p, &job));
    bit_ttt_job_free(job);
    bit_ttt_session_free(s2);
    bit_ttt_session_free(s);
}

static const char ADAPT_TEXT[] =
    "The quick brown fox jumps over the lazy dog. Once upon a time there was a little engine "
    "that ran on very few bits. It counted minus one, zero and plus one, and it was fast.";

typedef struct {
    int calls, last_step, total;
    float first, last;
    bit_ttt_session *cancel_me; /* cancel from inside the callback when set */
} progress_log;

static int32_t on_progress(void *user_data, int32_t step, int32_t total, float loss) {
    progress_log *p = user_data;
    CHECK(step == p->last_step + 1 && total >= step && loss == loss /* not NaN */);
    if (p->calls++ == 0) p->first = loss;
    p->last = loss;
    p->last_step = step;
    p->total = total;
    if (p->cancel_me) OK(bit_ttt_session_cancel(p->cancel_me));
    return 0;
}

static bit_ttt_adapt_params adapt_params(void) {
    bit_ttt_adapt_params p;
    OK(bit_ttt_adapt_params_init(&p));
    CHECK(p.struct_size == sizeof p && p.rank == 16 && p.projections == 0x7f && p.epochs == 2);
    p.learning_rate = 1e-2f;
    p.chunk_tokens = 256;
    p.epochs = 4;
    return p;
}

static void test_adapt(const bit_ttt_model *m) {
    bit_ttt_session *s = new_session(m, 256, 16);
    double before = 0, after = 0;
    size_t n_tok = 0;
    OK(bit_ttt_eval_nll(s, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &before, &n_tok));
    CHECK(n_tok > 10 && before > 0);

    /* Progress per step, the loss falls, and the text's NLL with it. */
    progress_log log = {0};
    bit_ttt_adapt_params p = adapt_params();
    p.on_progress = on_progress;
    p.user_data = &log;
    bit_ttt_adapt_result r = {.struct_size = sizeof r};
    OK(bit_ttt_adapt(s, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &p, &r));
    CHECK(r.steps == 4 && log.calls == 4 && log.total == 4 && r.tokens == n_tok);
    CHECK(r.first_loss == log.first && r.last_loss == log.last && r.last_loss < r.first_loss);
    OK(bit_ttt_eval_nll(s, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &after, NULL));
    CHECK(after < before);

    /* The state carries the adapters: the next tokens match after a load. */
    bit_ttt_generate_params g = greedy(8);
    g.ignore_eos = 1;
    size_t need = 0;
    EXPECT(bit_ttt_session_state_save(s, NULL, 0, &need), BIT_TTT_BUFFER_TOO_SMALL);
    uint8_t *blob = malloc(need);
    OK(bit_ttt_session_state_save(s, blob, need, &need));
    int32_t want[16], got[16];
    OK(bit_ttt_generate(s, "Once upon", BIT_TTT_NUL_TERMINATED, &g, NULL));
    size_t n_want = last_tokens(s, want, 16);
    bit_ttt_session *s2 = new_session(m, 256, 16);
    OK(bit_ttt_session_state_load(s2, blob, need));
    double loaded = 0;
    OK(bit_ttt_eval_nll(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &loaded, NULL));
    CHECK(loaded == after);
    OK(bit_ttt_generate(s2, "Once upon", BIT_TTT_NUL_TERMINATED, &g, NULL));
    CHECK(last_tokens(s2, got, 16) == n_want && memcmp(got, want, n_want * sizeof *got) == 0);
    bit_ttt_model *other = load(g_other_dir);
    bit_ttt_session *f = new_session(other, 256, 16);
    EXPECT(bit_ttt_session_state_load(f, blob, need), BIT_TTT_INCOMPATIBLE_STATE);
    bit_ttt_session_free(f);
    bit_ttt_model_free(other);
    free(blob);

    /* Resetting the adapters restores the base model exactly. */
    OK(bit_ttt_session_reset(s2, BIT_TTT_RESET_ADAPTERS));
    OK(bit_ttt_eval_nll(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &loaded, NULL));
    CHECK(loaded == before);

    /* Cancel from the progress callback: stops after that step. */
    progress_log clog = {0};
    clog.cancel_me = s2;
    p.user_data = &clog;
    p.chunk_tokens = 8;
    EXPECT(bit_ttt_adapt(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &p, NULL), BIT_TTT_CANCELLED);
    CHECK(clog.calls == 1);

    /* Bad arguments. */
    bit_ttt_adapt_params bad = adapt_params();
    bad.rank = 0;
    EXPECT(bit_ttt_adapt(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &bad, NULL), BIT_TTT_INVALID_ARGUMENT);
    CHECK(strstr(bit_ttt_last_error(), "rank") != NULL);
    bad = adapt_params();
    bad.learning_rate = -1.0f;
    EXPECT(bit_ttt_adapt(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &bad, NULL), BIT_TTT_INVALID_ARGUMENT);
    bad = adapt_params();
    bad.chunk_tokens = -5;
    EXPECT(bit_ttt_adapt(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &bad, NULL), BIT_TTT_INVALID_ARGUMENT);
    bad = adapt_params();
    bad.struct_size = 3;
    EXPECT(bit_ttt_adapt(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &bad, NULL), BIT_TTT_ABI_MISMATCH);
    EXPECT(bit_ttt_adapt(s2, "", 0, NULL, NULL), BIT_TTT_INVALID_ARGUMENT);
    EXPECT(bit_ttt_adapt(s2, "\xff\xfe", 2, NULL, NULL), BIT_TTT_INVALID_UTF8);
    EXPECT(bit_ttt_adapt(NULL, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, NULL, NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_adapt(s2, NULL, 3, NULL, NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_adapt_params_init(NULL), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_eval_nll(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, NULL, NULL), BIT_TTT_NULL_POINTER);

    /* Async: progress is polled, the result matches a synchronous run. */
    OK(bit_ttt_session_reset(s2, BIT_TTT_RESET_ALL));
    bit_ttt_adapt_params pa = adapt_params();
    bit_ttt_job *job = NULL;
    OK(bit_ttt_adapt_async(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &pa, &job));
    uint8_t done = 0;
    OK(bit_ttt_job_wait(job, -1, &done));
    CHECK(done == 1);
    int32_t step = -1, total = -1;
    float loss = 0;
    OK(bit_ttt_job_adapt_progress(job, &step, &total, &loss));
    CHECK(step == 4 && total == 4 && loss == r.last_loss);
    bit_ttt_adapt_result ra = {.struct_size = sizeof ra};
    OK(bit_ttt_job_adapt_result(job, &ra));
    CHECK(ra.steps == r.steps && ra.first_loss == r.first_loss && ra.last_loss == r.last_loss);
    bit_ttt_generate_result gr = new_result();
    EXPECT(bit_ttt_job_result(job, &gr), BIT_TTT_INVALID_ARGUMENT); /* not a generate job */
    bit_ttt_job_free(job);
    pa.on_progress = on_progress;
    EXPECT(bit_ttt_adapt_async(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &pa, &job), BIT_TTT_INVALID_ARGUMENT);
    EXPECT(bit_ttt_job_adapt_progress(NULL, &step, &total, &loss), BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_job_adapt_result(NULL, NULL), BIT_TTT_NULL_POINTER);

    /* A long async adapt is cancelled through the job. */
    pa = adapt_params();
    pa.chunk_tokens = 4;
    pa.epochs = 1000;
    OK(bit_ttt_adapt_async(s2, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &pa, &job));
    OK(bit_ttt_job_cancel(job));
    OK(bit_ttt_job_wait(job, -1, &done));
    bit_ttt_status st = bit_ttt_job_adapt_result(job, NULL);
    CHECK(st == BIT_TTT_CANCELLED || st == BIT_TTT_OK);
    bit_ttt_job_free(job);

    bit_ttt_session_free(s2);
    bit_ttt_session_free(s);
}

static void test_adapt_online(const bit_ttt_model *m) {
    /* Reading online with lr = 0 equals reading the text as a prompt: same next tokens. */
    bit_ttt_session *s = new_session(m, 256, 16);
    bit_ttt_adapt_params p = adapt_params();
    p.learning_rate = 0.0f;
    p.chunk_tokens = 16;
    progress_log log = {0};
    p.on_progress = on_progress;
    p.user_data = &log;
    bit_ttt_adapt_result r = {.struct_size = sizeof r};
    OK(bit_ttt_adapt_online(s, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &p, &r));
    CHECK(r.steps >= 2 && log.calls == (int)r.steps && r.first_loss == log.first);
    bit_ttt_generate_params g = greedy(6);
    g.ignore_eos = 1;
    OK(bit_ttt_generate(s, "", 0, &g, NULL));
    int32_t want[8], got[8];
    size_t n = last_tokens(s, got, 8);
    bit_ttt_session *plain = new_session(m, 256, 16);
    OK(bit_ttt_generate(plain, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &g, NULL));
    CHECK(last_tokens(plain, want, 8) == n && memcmp(got, want, n * sizeof *got) == 0);
    bit_ttt_session_free(plain);

    /* Too long for the context: refused, nothing read. */
    bit_ttt_session *small = new_session(m, 16, 16);
    EXPECT(bit_ttt_adapt_online(small, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, NULL, NULL),
           BIT_TTT_CONTEXT_FULL);
    EXPECT(bit_ttt_adapt_online(NULL, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, NULL, NULL),
           BIT_TTT_NULL_POINTER);
    EXPECT(bit_ttt_adapt_online(small, "\xff", 1, NULL, NULL), BIT_TTT_INVALID_UTF8);
    bit_ttt_session_free(small);

    /* Async online read with learning. */
    OK(bit_ttt_session_reset(s, BIT_TTT_RESET_ALL));
    bit_ttt_adapt_params pa = adapt_params();
    pa.chunk_tokens = 16;
    bit_ttt_job *job = NULL;
    OK(bit_ttt_adapt_online_async(s, ADAPT_TEXT, BIT_TTT_NUL_TERMINATED, &pa, &job));
    uint8_t done = 0;
    OK(bit_ttt_job_wait(job, -1, &done));
    bit_ttt_adapt_result ra = {.struct_size = sizeof ra};
    OK(bit_ttt_job_adapt_result(job, &ra));
    CHECK(ra.steps == r.steps && ra.first_loss == r.first_loss);
    bit_ttt_job_free(job);
    OK(bit_ttt_generate(s, "", 0, &g, NULL));
    bit_ttt_session_free(s);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR OTHER_MODEL_DIR SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    g_model_dir = argv[1];
    g_other_dir = argv[2];
    g_scratch = argv[3];
    CHECK(mkdir(g_scratch, 0755) == 0 || errno == EEXIST);
    test_version_and_system();
    test_log_callback();
    test_model_errors();
    test_model_load_and_info();
    bit_ttt_model *m = load(g_model_dir);
    test_text(m);
    test_generate(m);
    test_busy_and_cancel_during_decode(m);
    test_cancel_during_prefill(m);
    test_model_outlives_free();
    test_state(m);
    test_async(m);
    test_adapt(m);
    test_adapt_online(m);
    bit_ttt_model_free(m);
    printf("test_api: %d checks passed\n", g_checks);
    return 0;
}
