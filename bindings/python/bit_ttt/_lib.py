"""The C ABI of Bit-TTT (include/bit_ttt.h) declared for ctypes: library lookup, structs checked
against the library's own sizes, prototypes, and status codes turned into exceptions."""

import ctypes
import os
import sys
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char, c_char_p, c_double, c_float, c_int32,
                    c_size_t, c_uint8, c_uint32, c_uint64, c_void_p)
from pathlib import Path

NUL_TERMINATED = ctypes.c_size_t(-1).value
SEED_CONTINUE = (1 << 64) - 1

OK, INVALID_ARGUMENT, NULL_POINTER, BUFFER_TOO_SMALL, INVALID_UTF8, IO = 0, 1, 2, 3, 4, 5
INVALID_MODEL, INCOMPATIBLE_STATE, OUT_OF_MEMORY, CONTEXT_FULL, CANCELLED, BUSY = 6, 7, 8, 9, 10, 11
UNSUPPORTED, ABI_MISMATCH = 12, 13

STOP_TOKEN, STOP_STRING, STOP_MAX_TOKENS, STOP_CONTEXT_FULL, STOP_CANCELLED, STOP_CALLBACK = 1, 2, 3, 4, 5, 6
RESET_CONTEXT, RESET_ADAPTERS, RESET_RNG, RESET_ALL = 1, 2, 4, 7


class BitTttError(RuntimeError):
    """A call into the library failed; `status` is the BIT_TTT_* code, the message the library's."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class InvalidArgumentError(BitTttError, ValueError):
    """Bad parameters or text (BIT_TTT_INVALID_ARGUMENT, BIT_TTT_INVALID_UTF8)."""


class ModelLoadError(BitTttError, OSError):
    """The model could not be read or is malformed (BIT_TTT_IO, BIT_TTT_INVALID_MODEL)."""


class IncompatibleStateError(BitTttError, ValueError):
    """A saved state belongs to another model or is corrupt."""


class ContextFullError(BitTttError):
    """The prompt does not fit in the context window."""


class CancelledError(BitTttError):
    """The call was cancelled."""


_ERRORS = {
    INVALID_ARGUMENT: InvalidArgumentError,
    INVALID_UTF8: InvalidArgumentError,
    NULL_POINTER: InvalidArgumentError,
    IO: ModelLoadError,
    INVALID_MODEL: ModelLoadError,
    INCOMPATIBLE_STATE: IncompatibleStateError,
    CONTEXT_FULL: ContextFullError,
    CANCELLED: CancelledError,
}


class String(Structure):
    _fields_ = [("ptr", c_void_p), ("len", c_size_t)]


TokenCallback = CFUNCTYPE(c_int32, c_void_p, c_int32, POINTER(c_char), c_size_t)
AdaptCallback = CFUNCTYPE(c_int32, c_void_p, c_int32, c_int32, c_float)


class ModelParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_threads", c_uint32), ("kernel", String),
                ("int8_head", c_uint8), ("head", String), ("device", String),
                ("n_gpu_layers", c_int32)]


class ModelInfo(Structure):
    _fields_ = [("struct_size", c_uint32), ("family", c_int32), ("hidden_size", c_uint32),
                ("intermediate_size", c_uint32), ("num_layers", c_uint32), ("num_heads", c_uint32),
                ("num_kv_heads", c_uint32), ("vocab_size", c_uint32),
                ("max_position_embeddings", c_uint32), ("n_threads", c_uint32),
                ("n_params", c_uint64), ("n_ternary_params", c_uint64),
                ("weight_bytes", c_uint64), ("fp16_bytes", c_uint64), ("fingerprint", c_uint64)]


class SessionParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("n_ctx", c_uint32), ("n_batch", c_uint32),
                ("seed", c_uint64), ("kv_cache", String)]


class GenerateParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("max_tokens", c_int32), ("temperature", c_float),
                ("top_k", c_int32), ("top_p", c_float), ("min_p", c_float),
                ("repeat_penalty", c_float), ("repeat_last_n", c_int32),
                ("presence_penalty", c_float), ("frequency_penalty", c_float), ("seed", c_uint64),
                ("stop_strings", POINTER(String)), ("n_stop_strings", c_size_t),
                ("stop_tokens", POINTER(c_int32)), ("n_stop_tokens", c_size_t),
                ("ignore_eos", c_uint8), ("on_token", TokenCallback), ("user_data", c_void_p)]


class GenerateResult(Structure):
    _fields_ = [("struct_size", c_uint32), ("stop_reason", c_int32), ("prompt_tokens", c_uint32),
                ("generated_tokens", c_uint32), ("prefill_ms", c_double), ("decode_ms", c_double)]


class AdaptParams(Structure):
    _fields_ = [("struct_size", c_uint32), ("rank", c_int32), ("alpha", c_float),
                ("layers", c_int32), ("projections", c_uint32), ("learning_rate", c_float),
                ("weight_decay", c_float), ("beta1", c_float), ("beta2", c_float),
                ("eps", c_float), ("clip", c_float), ("chunk_tokens", c_int32),
                ("epochs", c_int32), ("seed", c_uint64), ("decay_to_init", c_float),
                ("keep_kv", c_uint8), ("on_progress", AdaptCallback), ("user_data", c_void_p)]


class AdaptResult(Structure):
    _fields_ = [("struct_size", c_uint32), ("steps", c_uint32), ("tokens", c_uint32),
                ("first_loss", c_float), ("last_loss", c_float), ("ms", c_double)]


class ChatMessage(Structure):
    _fields_ = [("role", String), ("content", String)]


STRUCTS = {
    "bit_ttt_model_params": ModelParams, "bit_ttt_model_info": ModelInfo,
    "bit_ttt_session_params": SessionParams, "bit_ttt_generate_params": GenerateParams,
    "bit_ttt_generate_result": GenerateResult, "bit_ttt_adapt_params": AdaptParams,
    "bit_ttt_adapt_result": AdaptResult, "bit_ttt_string": String,
    "bit_ttt_chat_message": ChatMessage,
}

_P = c_void_p  # opaque handles
_PROTOTYPES = {
    "bit_ttt_abi_version": (c_uint32, []),
    "bit_ttt_version_string": (c_char_p, []),
    "bit_ttt_struct_size": (c_size_t, [c_char_p]),
    "bit_ttt_last_error": (c_char_p, []),
    "bit_ttt_status_string": (c_char_p, [c_int32]),
    "bit_ttt_system_info": (c_int32, [c_void_p, c_size_t, POINTER(c_size_t)]),
    "bit_ttt_model_params_init": (c_int32, [POINTER(ModelParams)]),
    "bit_ttt_model_load": (c_int32, [c_char_p, c_size_t, POINTER(ModelParams), POINTER(_P)]),
    "bit_ttt_model_free": (None, [_P]),
    "bit_ttt_model_get_info": (c_int32, [_P, POINTER(ModelInfo)]),
    "bit_ttt_session_params_init": (c_int32, [POINTER(SessionParams)]),
    "bit_ttt_session_new": (c_int32, [_P, POINTER(SessionParams), POINTER(_P)]),
    "bit_ttt_session_free": (None, [_P]),
    "bit_ttt_session_cancel": (c_int32, [_P]),
    "bit_ttt_session_reset": (c_int32, [_P, c_uint32]),
    "bit_ttt_generate_params_init": (c_int32, [POINTER(GenerateParams)]),
    "bit_ttt_generate_async": (c_int32, [_P, c_char_p, c_size_t, POINTER(GenerateParams), POINTER(_P)]),
    "bit_ttt_job_poll": (c_int32, [_P, c_void_p, c_size_t, POINTER(c_size_t), POINTER(c_uint8)]),
    "bit_ttt_job_wait": (c_int32, [_P, c_int32, POINTER(c_uint8)]),
    "bit_ttt_job_result": (c_int32, [_P, POINTER(GenerateResult)]),
    "bit_ttt_job_cancel": (c_int32, [_P]),
    "bit_ttt_job_free": (None, [_P]),
    "bit_ttt_adapt_params_init": (c_int32, [POINTER(AdaptParams)]),
    "bit_ttt_adapt": (c_int32, [_P, c_char_p, c_size_t, POINTER(AdaptParams), POINTER(AdaptResult)]),
    "bit_ttt_adapt_online": (c_int32, [_P, c_char_p, c_size_t, POINTER(AdaptParams), POINTER(AdaptResult)]),
    "bit_ttt_adapt_async": (c_int32, [_P, c_char_p, c_size_t, POINTER(AdaptParams), POINTER(_P)]),
    "bit_ttt_adapt_online_async": (c_int32, [_P, c_char_p, c_size_t, POINTER(AdaptParams), POINTER(_P)]),
    "bit_ttt_job_adapt_progress": (c_int32, [_P, POINTER(c_int32), POINTER(c_int32), POINTER(c_float)]),
    "bit_ttt_job_adapt_result": (c_int32, [_P, POINTER(AdaptResult)]),
    "bit_ttt_eval_nll": (c_int32, [_P, c_char_p, c_size_t, POINTER(c_double), POINTER(c_size_t)]),
    "bit_ttt_session_state_save": (c_int32, [_P, c_void_p, c_size_t, POINTER(c_size_t)]),
    "bit_ttt_session_state_load": (c_int32, [_P, c_char_p, c_size_t]),
    "bit_ttt_tokenize": (c_int32, [_P, c_char_p, c_size_t, c_uint8, POINTER(c_int32), c_size_t, POINTER(c_size_t)]),
    "bit_ttt_detokenize": (c_int32, [_P, POINTER(c_int32), c_size_t, c_void_p, c_size_t, POINTER(c_size_t)]),
    "bit_ttt_chat_apply_template": (c_int32, [_P, POINTER(ChatMessage), c_size_t, c_uint8, c_void_p, c_size_t, POINTER(c_size_t)]),
}


def _lib_name():
    if sys.platform == "win32":
        return "bit_ttt.dll"
    return "libbit_ttt.dylib" if sys.platform == "darwin" else "libbit_ttt.so"


def _candidates():
    env = os.environ.get("BIT_TTT_LIB")
    if env:
        yield Path(env)
        return
    name = _lib_name()
    here = Path(__file__).resolve().parent
    yield here / name
    for start in (here, Path.cwd().resolve()):
        for d in (start, *start.parents):
            yield d / "target" / "release" / name


def find_library():
    tried = []
    for p in _candidates():
        tried.append(str(p))
        if p.is_file():
            return p
    raise OSError("libbit_ttt not found (set BIT_TTT_LIB, or build it with `cargo build --release`); "
                  "tried: " + ", ".join(tried))


def load():
    path = find_library()
    lib = ctypes.CDLL(str(path))
    for name, (res, args) in _PROTOTYPES.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    if lib.bit_ttt_abi_version() < 4:
        raise OSError(f"{path}: ABI version {lib.bit_ttt_abi_version()} is older than these bindings")
    for cname, py in STRUCTS.items():
        size = lib.bit_ttt_struct_size(cname.encode())
        if size != ctypes.sizeof(py):
            raise OSError(f"{path}: {cname} is {size} bytes in the library, {ctypes.sizeof(py)} in "
                          "these bindings: use bindings of the same version as the library")
    lib.path = path
    return lib


LIB = load()


def check(status):
    """Raises the exception for a failed status, with the library's message for this thread."""
    if status == OK:
        return
    message = (LIB.bit_ttt_last_error() or b"").decode("utf-8", "replace")
    name = (LIB.bit_ttt_status_string(status) or b"?").decode()
    raise _ERRORS.get(status, BitTttError)(status, f"{name}: {message}")


def read_buffer(fill):
    """Calls fill(buf, cap, out_len) with the library's two-call buffer rule; returns bytes."""
    n = c_size_t(0)
    st = fill(None, 0, ctypes.byref(n))
    if st == OK and n.value == 0:
        return b""
    if st not in (OK, BUFFER_TOO_SMALL):
        check(st)
    buf = ctypes.create_string_buffer(n.value + 1)
    check(fill(buf, n.value + 1, ctypes.byref(n)))
    return buf.raw[:n.value]
