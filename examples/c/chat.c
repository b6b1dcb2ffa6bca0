/*
 * A small chat program over the C API: load a model, read a line, stream the reply, repeat.
 *
 *   cc -Iinclude examples/c/chat.c -Ltarget/release -lbit_ttt -o chat
 *   ./chat MODEL_DIR            (an empty line or end of input quits)
 */
#include "bit_ttt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int32_t print_piece(void *user_data, int32_t token, const char *text, size_t len) {
    (void)user_data, (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0; /* non-zero would stop generation */
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    bit_ttt_model *model = NULL;
    if (bit_ttt_model_load(argv[1], BIT_TTT_NUL_TERMINATED, NULL, &model) != BIT_TTT_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], bit_ttt_last_error());
        return 1;
    }
    bit_ttt_session *session = NULL;
    if (bit_ttt_session_new(model, NULL, &session) != BIT_TTT_OK) {
        fprintf(stderr, "cannot create a session: %s\n", bit_ttt_last_error());
        bit_ttt_model_free(model);
        return 1;
    }

    bit_ttt_generate_params params;
    bit_ttt_generate_params_init(&params);
    params.max_tokens = 128;
    params.on_token = print_piece;

    char line[4096], prompt[8192];
    int status = 0;
    for (;;) {
        printf("> ");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin) || line[0] == '\n') break;
        line[strcspn(line, "\n")] = '\0';
        bit_ttt_chat_message msg = {{"user", 4}, {line, BIT_TTT_NUL_TERMINATED}};
        size_t len = 0;
        if (bit_ttt_chat_apply_template(model, &msg, 1, 1, prompt, sizeof prompt, &len) != BIT_TTT_OK) {
            /* Models without a chat template: use the line as it is. */
            snprintf(prompt, sizeof prompt, "%s", line);
        }
        bit_ttt_generate_result result;
        result.struct_size = sizeof result;
        if (bit_ttt_generate(session, prompt, BIT_TTT_NUL_TERMINATED, &params, &result) != BIT_TTT_OK) {
            fprintf(stderr, "\ngenerate failed: %s\n", bit_ttt_session_last_error(session));
            status = 1;
            break;
        }
        printf("\n[%u tokens, %.1f tokens/s]\n", result.generated_tokens,
               result.generated_tokens / (result.decode_ms / 1000.0 + 1e-9));
        bit_ttt_session_reset(session, BIT_TTT_RESET_CONTEXT);
    }
    bit_ttt_session_free(session);
    bit_ttt_model_free(model);
    return status;
}
