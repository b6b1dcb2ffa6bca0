"""Bit-TTT for Python: BitNet b1.58 inference and test-time training over the library's C ABI.

The API follows llama-cpp-python: ``Llama(model_path)``, ``llm(prompt)`` /
``create_completion`` and ``create_chat_completion`` returning OpenAI-shaped dicts (or iterators
of chunks with ``stream=True``), ``tokenize`` / ``detokenize``; plus ``adapt`` (test-time
training), ``perplexity``, ``save_state`` / ``load_state`` and ``reset``.
"""

import ctypes
import math
import os
import time
import uuid
from ctypes import byref, c_double, c_float, c_int32, c_size_t, c_uint8, c_void_p
from pathlib import Path

from . import _lib
from ._lib import (BitTttError, CancelledError, ContextFullError, IncompatibleStateError,
                   InvalidArgumentError, ModelLoadError, check)

__all__ = ["Llama", "BitTttError", "CancelledError", "ContextFullError", "IncompatibleStateError",
           "InvalidArgumentError", "ModelLoadError", "system_info", "version"]
__version__ = "0.1.0"

_L = _lib.LIB
_FINISH = {_lib.STOP_TOKEN: "stop", _lib.STOP_STRING: "stop", _lib.STOP_MAX_TOKENS: "length",
           _lib.STOP_CONTEXT_FULL: "length", _lib.STOP_CALLBACK: "stop"}
_POLL_MS = 20  # how long a wait may block before Python can see Ctrl-C


def version():
    """The native library's version string."""
    return _L.bit_ttt_version_string().decode()


def system_info():
    """What the library sees: CPU features, kernels, threads, CUDA."""
    return _lib.read_buffer(_L.bit_ttt_system_info).decode()


def _utf8(text):
    if isinstance(text, bytes):
        return text
    if not isinstance(text, str):
        raise TypeError(f"expected str or bytes, got {type(text).__name__}")
    return text.encode("utf-8")


def _sample_model():
    """The sample model shipped in the repository: BIT_TTT_MODEL, else models/sample above the
    native library, the package or the working directory."""
    env = os.environ.get("BIT_TTT_MODEL")
    if env:
        return Path(env)
    starts = [Path(_L.path).resolve().parent, Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for d in (start, *start.parents):
            if (d / "models" / "sample" / "config.json").is_file():
                return d / "models" / "sample"
    raise ModelLoadError(_lib.IO, "model_path is None and the sample model (models/sample) was not "
                                  "found: set BIT_TTT_MODEL or pass model_path")


class _Job:
    """An async native job, freed (and so cancelled) however the caller leaves."""

    def __init__(self, start):
        self.handle = c_void_p()
        check(start(byref(self.handle)))

    def poll(self):
        """(text produced since the last poll, whether the job has finished and been drained)."""
        n, done = c_size_t(0), c_uint8(0)
        buf, cap = None, 0
        while True:  # the job keeps producing: grow until one call takes all of it
            st = _L.bit_ttt_job_poll(self.handle, buf, cap, byref(n), byref(done))
            if st != _lib.BUFFER_TOO_SMALL:
                check(st)
                return (buf.raw[:n.value] if buf is not None else b""), bool(done.value)
            cap = 2 * n.value + 64
            buf = ctypes.create_string_buffer(cap)

    def wait(self):
        done = c_uint8(0)
        check(_L.bit_ttt_job_wait(self.handle, _POLL_MS, byref(done)))
        return bool(done.value)

    def free(self):
        if self.handle:
            _L.bit_ttt_job_free(self.handle)
            self.handle = c_void_p()


class Llama:
    """A model and one session over it (its context, sampler, and adapters).

    model_path: a Hugging Face BitNet folder or a `bit-ttt convert` file; None = the sample model.
    n_ctx: context tokens (0 = the model's maximum). n_threads: 0 = one per core.
    seed: the sampler's seed. kernel: force a CPU kernel ("avx2", ...). head: the output head's
    format, "native", "int8" or "int4" (fewer bytes per token, faster decode; int8_head=True is
    head="int8"). kv_cache: "f32" (exact, the default) or "f16" (half the KV memory, faster
    decode in long contexts; llama.cpp's default). device: "auto" (the GPU when the library was
    built with CUDA and finds one, the default), "cpu", "cuda" or "cuda:N"; n_gpu_layers: layers
    to run on the GPU, -1 = all and the output head (as llama-cpp-python's n_gpu_layers).
    """

    def __init__(self, model_path=None, *, n_ctx=0, n_threads=0, n_batch=512, seed=None,
                 kernel=None, int8_head=False, head=None, kv_cache=None, device=None,
                 n_gpu_layers=-1, verbose=False):
        self._model = c_void_p()
        self._session = c_void_p()
        path = Path(model_path) if model_path is not None else _sample_model()
        self.model_path = str(path)
        mp = _lib.ModelParams()
        check(_L.bit_ttt_model_params_init(byref(mp)))
        mp.n_threads = _nonneg(n_threads, "n_threads")
        mp.int8_head = 1 if int8_head else 0
        kernel_bytes = _utf8(kernel) if kernel else b""
        if kernel_bytes:
            buf = ctypes.create_string_buffer(kernel_bytes)
            mp.kernel.ptr, mp.kernel.len = ctypes.cast(buf, c_void_p), len(kernel_bytes)
        head_bytes = _utf8(head) if head else b""
        if head_bytes:
            head_buf = ctypes.create_string_buffer(head_bytes)
            mp.head.ptr, mp.head.len = ctypes.cast(head_buf, c_void_p), len(head_bytes)
        device_bytes = _utf8(device) if device else b""
        if device_bytes:
            device_buf = ctypes.create_string_buffer(device_bytes)
            mp.device.ptr, mp.device.len = ctypes.cast(device_buf, c_void_p), len(device_bytes)
        mp.n_gpu_layers = int(n_gpu_layers)
        p = _utf8(str(path))
        check(_L.bit_ttt_model_load(p, len(p), byref(mp), byref(self._model)))
        sp = _lib.SessionParams()
        check(_L.bit_ttt_session_params_init(byref(sp)))
        sp.n_ctx = _nonneg(n_ctx, "n_ctx")
        sp.n_batch = _nonneg(n_batch, "n_batch")
        if seed is not None:
            sp.seed = int(seed) & ((1 << 64) - 1)
        kv_bytes = _utf8(kv_cache) if kv_cache else b""
        if kv_bytes:
            kv_buf = ctypes.create_string_buffer(kv_bytes)
            sp.kv_cache.ptr, sp.kv_cache.len = ctypes.cast(kv_buf, c_void_p), len(kv_bytes)
        try:
            check(_L.bit_ttt_session_new(self._model, byref(sp), byref(self._session)))
        except BaseException:
            self.close()
            raise
        info = _lib.ModelInfo(struct_size=ctypes.sizeof(_lib.ModelInfo))
        check(_L.bit_ttt_model_get_info(self._model, byref(info)))
        self.metadata = {f: getattr(info, f) for f, _ in _lib.ModelInfo._fields_[1:]}
        self._n_ctx = n_ctx or info.max_position_embeddings
        if verbose:
            print(f"bit_ttt {version()}: {self.model_path}, {info.n_params / 1e6:.1f} M parameters")

    # -- lifetime ---------------------------------------------------------------------------

    def close(self):
        """Frees the session and the model. Safe to call twice."""
        if getattr(self, "_session", None):
            _L.bit_ttt_session_free(self._session)
            self._session = c_void_p()
        if getattr(self, "_model", None):
            _L.bit_ttt_model_free(self._model)
            self._model = c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def _live(self):
        if not self._session:
            raise InvalidArgumentError(_lib.INVALID_ARGUMENT, "this Llama is closed")
        return self._session

    def n_ctx(self):
        return self._n_ctx

    # -- text -------------------------------------------------------------------------------

    def tokenize(self, text, add_bos=True, special=False):
        """Token ids of `text` (str or UTF-8 bytes); add_bos adds what the tokenizer adds."""
        del special  # special tokens in the text are always parsed, as the tokenizer defines
        t = _utf8(text)
        n = c_size_t(0)
        _L.bit_ttt_tokenize(self._model, t, len(t), 1 if add_bos else 0, None, 0, byref(n))
        buf = (c_int32 * max(n.value, 1))()
        check(_L.bit_ttt_tokenize(self._model, t, len(t), 1 if add_bos else 0, buf, len(buf), byref(n)))
        return list(buf[:n.value])

    def detokenize(self, tokens):
        """UTF-8 bytes of token ids (special tokens left out)."""
        arr = (c_int32 * max(len(tokens), 1))(*[int(t) for t in tokens])
        return _lib.read_buffer(lambda b, c, n: _L.bit_ttt_detokenize(self._model, arr, len(tokens), b, c, n))

    # -- completion -------------------------------------------------------------------------

    def __call__(self, prompt, **kwargs):
        return self.create_completion(prompt, **kwargs)

    def create_completion(self, prompt, max_tokens=16, temperature=0.8, top_p=0.95, top_k=40,
                          min_p=0.05, repeat_penalty=1.0, presence_penalty=0.0,
                          frequency_penalty=0.0, stop=None, seed=None, stream=False):
        """Completes `prompt` from an empty context (the adapters stay). Returns an OpenAI-shaped
        dict, or with stream=True an iterator of chunks; leaving the iterator early (break,
        Ctrl-C) cancels the native job."""
        chunks = self._generate(prompt, max_tokens, temperature, top_p, top_k, min_p,
                                repeat_penalty, presence_penalty, frequency_penalty, stop, seed)
        cid, created = f"cmpl-{uuid.uuid4()}", int(time.time())

        def shape(text, finish):
            return {"id": cid, "object": "text_completion", "created": created,
                    "model": self.model_path,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if stream:
            return (shape(text, finish) for text, finish, _ in chunks)
        parts, finish, usage = [], None, None
        for text, finish, usage in chunks:
            parts.append(text)
        out = shape("".join(parts), finish)
        out["usage"] = usage
        return out

    def create_chat_completion(self, messages, max_tokens=None, temperature=0.8, top_p=0.95,
                               top_k=40, min_p=0.05, repeat_penalty=1.0, presence_penalty=0.0,
                               frequency_penalty=0.0, stop=None, seed=None, stream=False):
        """Chat through the model's template; `messages` as OpenAI's [{"role", "content"}]."""
        prompt = self.apply_chat_template(messages, add_generation_prompt=True)
        chunks = self._generate(prompt, max_tokens or 0, temperature, top_p, top_k, min_p,
                                repeat_penalty, presence_penalty, frequency_penalty, stop, seed)
        cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
        if stream:
            def gen():
                yield {"id": cid, "object": "chat.completion.chunk", "created": created,
                       "model": self.model_path,
                       "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
                for text, finish, _ in chunks:
                    delta = {"content": text} if text else {}
                    yield {"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": self.model_path,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return gen()
        parts, finish, usage = [], None, None
        for text, finish, usage in chunks:
            parts.append(text)
        return {"id": cid, "object": "chat.completion", "created": created, "model": self.model_path,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                             "finish_reason": finish}],
                "usage": usage}

    def apply_chat_template(self, messages, add_generation_prompt=True):
        """The prompt the model's chat template makes of `messages`."""
        keep = []
        arr = (_lib.ChatMessage * max(len(messages), 1))()
        for m, msg in zip(arr, messages):
            for field, value in (("role", msg["role"]), ("content", msg["content"])):
                b = ctypes.create_string_buffer(_utf8(value))
                keep.append(b)
                s = getattr(m, field)
                s.ptr, s.len = ctypes.cast(b, c_void_p), len(b) - 1
        return _lib.read_buffer(lambda b, c, n: _L.bit_ttt_chat_apply_template(
            self._model, arr, len(messages), 1 if add_generation_prompt else 0, b, c, n)).decode()

    def _generate(self, prompt, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty,
                  presence_penalty, frequency_penalty, stop, seed):
        """Yields (text, finish_reason or None, usage or None); the last item has both."""
        session = self._live()
        gp = _lib.GenerateParams()
        check(_L.bit_ttt_generate_params_init(byref(gp)))
        if max_tokens is None or max_tokens < 0:
            max_tokens = 0
        gp.max_tokens = int(max_tokens)
        gp.temperature, gp.top_p, gp.top_k, gp.min_p = temperature, top_p, int(top_k), min_p
        gp.repeat_penalty, gp.presence_penalty = repeat_penalty, presence_penalty
        gp.frequency_penalty = frequency_penalty
        if seed is not None:
            gp.seed = int(seed) & ((1 << 64) - 1)
        stops = [stop] if isinstance(stop, (str, bytes)) else list(stop or [])
        keep = [ctypes.create_string_buffer(_utf8(s)) for s in stops]
        if stops:
            arr = (_lib.String * len(stops))()
            for s, b in zip(arr, keep):
                s.ptr, s.len = ctypes.cast(b, c_void_p), len(b) - 1
            keep.append(arr)
            gp.stop_strings, gp.n_stop_strings = ctypes.cast(arr, ctypes.POINTER(_lib.String)), len(stops)
        text = _utf8(prompt)
        check(_L.bit_ttt_session_reset(session, _lib.RESET_CONTEXT))
        job = _Job(lambda out: _L.bit_ttt_generate_async(session, text, len(text), byref(gp), out))
        return self._stream(job, keep)

    def _stream(self, job, keep):
        del keep  # kept alive until the job has read the params
        try:
            pending = b""
            while True:
                chunk, done = job.poll()
                pending += chunk
                # Yield whole UTF-8 characters only.
                cut = _utf8_prefix(pending)
                if cut:
                    yield pending[:cut].decode("utf-8"), None, None
                    pending = pending[cut:]
                if done:
                    break
                job.wait()
            res = _lib.GenerateResult(struct_size=ctypes.sizeof(_lib.GenerateResult))
            check(_L.bit_ttt_job_result(job.handle, byref(res)))
            usage = {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.generated_tokens,
                     "total_tokens": res.prompt_tokens + res.generated_tokens}
            yield pending.decode("utf-8", "replace"), _FINISH.get(res.stop_reason, "stop"), usage
        finally:
            job.free()

    # -- adapt, scoring, state --------------------------------------------------------------

    def adapt(self, text, *, rank=None, alpha=None, layers=None, learning_rate=None, epochs=None,
              chunk_tokens=None, clip=None, weight_decay=None, decay_to_init=None, seed=None,
              keep_kv=False, online=False, progress=None):
        """Test-time training of the session's adapters on `text` (the model is never modified).
        online=True reads the text window by window, scoring each before one step on it.
        progress(step, total_steps, loss) is called from this thread after every step; return
        False to stop there (the steps taken are kept). Returns {"steps", "tokens",
        "first_loss", "last_loss", "seconds"}."""
        session = self._live()
        ap = _lib.AdaptParams()
        check(_L.bit_ttt_adapt_params_init(byref(ap)))
        for name, value in (("rank", rank), ("alpha", alpha), ("layers", layers),
                            ("learning_rate", learning_rate), ("epochs", epochs),
                            ("chunk_tokens", chunk_tokens), ("clip", clip),
                            ("weight_decay", weight_decay), ("decay_to_init", decay_to_init)):
            if value is not None:
                setattr(ap, name, value)
        if seed is not None:
            ap.seed = int(seed) & ((1 << 64) - 1)
        ap.keep_kv = 1 if keep_kv else 0
        t = _utf8(text)
        res = _lib.AdaptResult(struct_size=ctypes.sizeof(_lib.AdaptResult))
        if progress is not None:
            # Synchronous, so the callback sees every step; it runs on this thread.
            raised = []

            def on_step(_user, step, total, loss):
                try:
                    return 0 if progress(step, total, loss) is not False else 1
                except BaseException as ex:  # Ctrl-C included: stop, re-raise below
                    raised.append(ex)
                    return 1

            ap.on_progress = _lib.AdaptCallback(on_step)
            call = _L.bit_ttt_adapt_online if online else _L.bit_ttt_adapt
            st = call(session, t, len(t), byref(ap), byref(res))
            if raised:
                raise raised[0]
            check(st)
        else:
            # As a job, waited on in short slices so that Ctrl-C stops it.
            start = _L.bit_ttt_adapt_online_async if online else _L.bit_ttt_adapt_async
            job = _Job(lambda out: start(session, t, len(t), byref(ap), out))
            try:
                while not job.wait():
                    pass
                check(_L.bit_ttt_job_adapt_result(job.handle, byref(res)))
            finally:
                job.free()
        return {"steps": res.steps, "tokens": res.tokens, "first_loss": res.first_loss,
                "last_loss": res.last_loss, "seconds": res.ms / 1e3}

    def perplexity(self, text):
        """exp(mean NLL) of `text` with the current adapters (the context is left as it is)."""
        t = _utf8(text)
        nll, n = c_double(0), c_size_t(0)
        check(_L.bit_ttt_eval_nll(self._live(), t, len(t), byref(nll), byref(n)))
        return math.exp(nll.value)

    def save_state(self):
        """The session (context, sampler, adapters and optimiser moments) as bytes."""
        s = self._live()
        return _lib.read_buffer(lambda b, c, n: _L.bit_ttt_session_state_save(s, b, c, n))

    def load_state(self, state):
        """Restores a state from save_state; refuses one from another model, all or nothing."""
        if not isinstance(state, (bytes, bytearray)):
            raise TypeError("state must be bytes")
        check(_L.bit_ttt_session_state_load(self._live(), bytes(state), len(state)))

    def reset(self, context=True, adapters=True, rng=False):
        """Clears the context and the adapters (and reseeds the sampler with rng=True)."""
        parts = ((_lib.RESET_CONTEXT if context else 0) | (_lib.RESET_ADAPTERS if adapters else 0)
                 | (_lib.RESET_RNG if rng else 0))
        check(_L.bit_ttt_session_reset(self._live(), parts))


def _nonneg(v, name):
    v = int(v)
    if v < 0 or v >= 1 << 32:
        raise InvalidArgumentError(_lib.INVALID_ARGUMENT, f"{name} = {v}: must be in 0..2^32")
    return v


def _utf8_prefix(b):
    """Length of the longest prefix of `b` that ends on a whole UTF-8 character."""
    end = len(b)
    for back in range(1, min(4, end) + 1):
        c = b[end - back]
        if c & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 1 if c < 0x80 else 2 if c >> 5 == 6 else 3 if c >> 4 == 14 else 4
            return end if back >= need else end - back
    return end
