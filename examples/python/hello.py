"""Zero-configuration Bit-TTT from Python: the sample model that ships with the repository.

    cargo build --release && pip install ./bindings/python && python3 examples/python/hello.py
"""

from bit_ttt import Llama

with Llama(seed=1) as llm:
    print(llm("It was a cold morning and", max_tokens=40)["choices"][0]["text"])
    notes = "The lighthouse keeper was called Amos Pell. Amos Pell kept a red notebook. " * 8
    before = llm.perplexity(notes)
    llm.adapt(notes, progress=lambda step, total, loss: print(f"adapt step {step}/{total}: loss {loss:.3f}"))
    print(f"perplexity of the notes: {before:.1f} before adapt, {llm.perplexity(notes):.1f} after")
