"""The Python bindings against the native library, on the sample model shipped in the repository
(and a test fixture as a "foreign" model). Run by scripts/test.sh in a fresh virtualenv after
`pip install ./bindings/python`."""

import ctypes
import threading
from pathlib import Path

import pytest

import bit_ttt
from bit_ttt import _lib

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "bitnet_packed_auto"
TEXT = ("The committee met on Tuesday to discuss the new budget. Several members said that the "
        "plan would raise taxes for the families of the county. ") * 4


@pytest.fixture(scope="module")
def llm():
    with bit_ttt.Llama(n_ctx=512, seed=7) as m:
        yield m


def greedy(llm, prompt, n=12):
    return llm(prompt, max_tokens=n, temperature=0)["choices"][0]["text"]


def test_library_and_struct_layouts():
    assert bit_ttt.version() == "0.1.0"
    assert "ternary kernel" in bit_ttt.system_info()
    for name, cls in _lib.STRUCTS.items():
        assert _lib.LIB.bit_ttt_struct_size(name.encode()) == ctypes.sizeof(cls), name
    assert _lib.LIB.bit_ttt_struct_size(b"bit_ttt_nothing") == 0


def test_completion_is_openai_shaped(llm):
    r = llm("It was a cold morning and", max_tokens=8, seed=3)
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    choice = r["choices"][0]
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert isinstance(choice["text"], str) and choice["text"]
    assert r["usage"]["completion_tokens"] == 8
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + 8


def test_each_completion_starts_from_an_empty_context(llm):
    a = greedy(llm, "The old man")
    b = greedy(llm, "The old man")
    assert a == b and a.strip()


def test_seed_reproduces_sampling(llm):
    a = llm("The city", max_tokens=12, seed=11)["choices"][0]["text"]
    b = llm("The city", max_tokens=12, seed=11)["choices"][0]["text"]
    assert a == b


def test_stop_strings_end_the_text(llm):
    full = greedy(llm, "The old man", 24)
    cut = full[: len(full) // 2].rstrip()[-3:]
    r = llm("The old man", max_tokens=24, temperature=0, stop=[cut])
    text = r["choices"][0]["text"]
    assert cut not in text and full.startswith(text) and r["choices"][0]["finish_reason"] == "stop"


def test_stream_yields_the_same_text(llm):
    chunks = list(llm("The old man", max_tokens=12, temperature=0, stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks) == greedy(llm, "The old man")


def test_leaving_a_stream_cancels_the_native_job(llm):
    for _ in llm("Once upon a time", max_tokens=0, stream=True):
        break  # generation "until the context is full" must not keep running
    assert greedy(llm, "The old man")  # the session is free again

    def interrupted():
        for _ in llm("Once upon a time", max_tokens=0, stream=True):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert greedy(llm, "The old man")


def test_chat_completion_and_its_stream(llm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    prompt = llm.apply_chat_template(messages)
    assert prompt.endswith("Assistant: ") and "User: Hello" in prompt
    r = llm.create_chat_completion(messages, max_tokens=6, temperature=0)
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"]["role"] == "assistant"
    chunks = list(llm.create_chat_completion(messages, max_tokens=6, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == r["choices"][0]["message"]["content"]


def test_tokenize_and_detokenize(llm):
    ids = llm.tokenize("Hello world")
    assert ids[0] == 0 and llm.tokenize(b"Hello world", add_bos=False) == ids[1:]
    assert llm.detokenize(ids) == b"Hello world"
    assert llm.detokenize([]) == b""


def test_adapt_lowers_perplexity_and_reset_restores_it(llm):
    llm.reset()
    before = llm.perplexity(TEXT)
    steps = []
    r = llm.adapt(TEXT, learning_rate=1e-2, chunk_tokens=64, epochs=2,
                  progress=lambda s, t, loss: steps.append((s, t, loss)))
    assert r["steps"] == len(steps) >= 2 and [s for s, _, _ in steps] == list(range(1, len(steps) + 1))
    after = llm.perplexity(TEXT)
    assert after < before
    llm.reset()
    assert llm.perplexity(TEXT) == before


def test_adapt_progress_can_stop_it_and_online_mode_reads(llm):
    llm.reset()
    seen = []
    r = llm.adapt(TEXT, chunk_tokens=16, epochs=50, progress=lambda s, t, loss: seen.append(s) or s < 3)
    assert r["steps"] == 3 and seen == [1, 2, 3]
    llm.reset()

    def interrupt(step, total, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        llm.adapt(TEXT, chunk_tokens=16, progress=interrupt)
    llm.reset()
    r = llm.adapt(TEXT, online=True, chunk_tokens=32)
    assert r["steps"] >= 2 and r["first_loss"] > 0
    llm.reset()


def test_state_round_trip_and_foreign_state(llm):
    llm.reset()
    llm.adapt(TEXT, learning_rate=3e-3, chunk_tokens=64, epochs=1)
    state = llm.save_state()
    adapted = llm.perplexity(TEXT)
    llm.reset()
    assert llm.perplexity(TEXT) != adapted
    llm.load_state(state)
    assert llm.perplexity(TEXT) == adapted
    with bit_ttt.Llama(str(FIXTURE)) as other:
        with pytest.raises(bit_ttt.IncompatibleStateError):
            other.load_state(state)
    with pytest.raises(bit_ttt.IncompatibleStateError):
        llm.load_state(b"not a state")
    with pytest.raises(TypeError):
        llm.load_state("text")
    llm.reset()


def test_errors_name_what_is_wrong(llm, tmp_path):
    with pytest.raises(bit_ttt.ModelLoadError) as e:
        bit_ttt.Llama(str(tmp_path / "missing"))
    assert "missing" in str(e.value)
    with pytest.raises(bit_ttt.InvalidArgumentError):
        bit_ttt.Llama(n_ctx=-1)
    with pytest.raises(bit_ttt.InvalidArgumentError) as e:
        llm("x", temperature=-1.0)
    assert "temperature" in str(e.value)
    with pytest.raises(bit_ttt.InvalidArgumentError):
        llm(b"\xff\xfe", max_tokens=2)
    with pytest.raises(bit_ttt.InvalidArgumentError) as e:
        llm.adapt(TEXT, rank=0)
    assert "rank" in str(e.value)
    with pytest.raises(bit_ttt.ContextFullError):
        llm("word " * 2000, max_tokens=1)
    with pytest.raises(TypeError):
        llm.tokenize(123)
    closed = bit_ttt.Llama(str(FIXTURE))
    closed.close()
    closed.close()
    with pytest.raises(bit_ttt.InvalidArgumentError):
        closed("x")


def test_two_sessions_from_two_threads():
    models = [bit_ttt.Llama(n_ctx=256), bit_ttt.Llama(n_ctx=256)]
    want = greedy(models[0], "The old man", 16)
    results, errors = [None, None], []

    def run(i):
        try:
            for _ in range(3):
                results[i] = greedy(models[i], "The old man", 16)
        except Exception as ex:  # surfaced below
            errors.append(ex)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [want, want]
    for m in models:
        m.close()


def test_quantised_heads_load_and_generate():
    for head in ("int8", "int4"):
        with bit_ttt.Llama(n_ctx=128, seed=1, head=head) as m:
            assert m("It was a cold morning and", max_tokens=4, temperature=0)["choices"][0]["text"]
    with pytest.raises(bit_ttt.InvalidArgumentError, match="int3"):
        bit_ttt.Llama(n_ctx=128, head="int3")


def test_device_is_chosen_by_name_and_unknown_ones_are_refused():
    with bit_ttt.Llama(n_ctx=128, seed=1, device="cpu") as m:
        assert m("It was a cold morning and", max_tokens=3, temperature=0)["choices"][0]["text"]
    with pytest.raises(bit_ttt.InvalidArgumentError, match="tpu"):
        bit_ttt.Llama(n_ctx=128, device="tpu")
    with pytest.raises(bit_ttt.InvalidArgumentError, match="n_gpu_layers"):
        bit_ttt.Llama(n_ctx=128, n_gpu_layers=-2)


def test_f16_kv_cache_generates_and_unknown_types_are_refused():
    with bit_ttt.Llama(n_ctx=128, seed=1, kv_cache="f16") as m:
        assert m("It was a cold morning and", max_tokens=4, temperature=0)["choices"][0]["text"]
    with pytest.raises(bit_ttt.InvalidArgumentError, match="q8_0"):
        bit_ttt.Llama(n_ctx=128, kv_cache="q8_0")
