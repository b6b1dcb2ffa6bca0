#!/usr/bin/env python3
"""Checks the layer rules of docs/ARCHITECTURE.md over the Rust sources.

    python3 tools/check_layers.py            # rules: floors, cycles, the public-API door
    python3 tools/check_layers.py --graph    # also print every file's imports

Reads every `crate::` / `super::` path in src/ (use trees included, comments and strings left
out), resolves it to the file that defines it (re-exports in lib.rs and mod.rs followed to their
origin), and checks three rules:

1. Floors: each file's top-level module has a floor (FLOORS below); an import may point at the
   same module or at a lower floor, never up.
2. No cycles between files. A mod.rs naming its own children (declaring, re-exporting or
   dispatching to them) does not count as a use.
3. src/ffi/ and cli/ use only the public API: `crate::X` / `bit_ttt::X` where X is declared or
   re-exported `pub` at the crate root, never a path through an internal module.

4. `unsafe` only in the folders that need it: kernels/ (SIMD), cuda/ (the driver), ffi/ (C
   pointers) and storage/ (memory maps). Each block's SAFETY comment is enforced by clippy
   (`undocumented_unsafe_blocks` in Cargo.toml's [lints]).

Exit status 1 and a line per violation when a rule is broken. Python 3 standard library only.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Bottom (0) to top. A module may import from its own floor's modules only where listed in
# SAME_FLOOR; otherwise strictly downwards.
FLOORS = {
    "error": 0,
    "log": 0,
    "storage": 1,
    "rng": 1,
    "device": 1,
    "quant": 2,
    "kernels": 3,
    "config": 4,
    "text": 4,
    "sampling": 4,
    "transformer": 5,
    "loader": 6,
    "cuda": 6,
    "state": 7,
    "adapt": 7,
    "model": 8,
    "session": 9,
    "system": 9,
    "crate": 10,
    "__internal": 10,
    "ffi": 11,
}
# The modules that may hold `unsafe`.
UNSAFE_ALLOWED = {"kernels", "cuda", "ffi", "storage"}
# Same-floor imports that are allowed (importer, imported).
SAME_FLOOR = {("adapt", "state")}


def strip_comments_and_strings(text):
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 12]):
            m = re.match(r"'(\\[^']*|[^\\'])'", text[i:])
            i += len(m.group(0)) if m else 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def file_module(path):
    """src/kernels/x86.rs -> ('kernels', 'x86'); src/lib.rs -> ()."""
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts == ["lib"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def expand_use_tree(s):
    """'a::{b, c::{d, e}}' -> ['a::b', 'a::c::d', 'a::c::e']."""
    s = re.sub(r"\s+", "", s)
    depth = 0
    for i, c in enumerate(s):
        if c == "{":
            if depth == 0:
                prefix, inner = s[:i], s[i + 1:s.rindex("}")]
                parts, d, start = [], 0, 0
                for j, cj in enumerate(inner):
                    if cj == "{":
                        d += 1
                    elif cj == "}":
                        d -= 1
                    elif cj == "," and d == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                res = []
                for p in parts:
                    if not p:
                        continue
                    if p == "self":
                        res.append(prefix.rstrip(":"))
                    else:
                        res.extend(prefix + q for q in expand_use_tree(p))
                return res
            depth += 1
    return [s]  # callers strip `as` aliases before expanding


def inline_modules(text):
    """[(start, end, name)] of every `mod name { ... }` written inline in a file."""
    out = []
    for m in re.finditer(r"\bmod\s+(\w+)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((m.start(), i, m.group(1)))
    return out


def strip_test_modules(text):
    """The text without its `#[cfg(test)] mod name { ... }` blocks: tests sit above every floor."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[i:]


def paths_in(text, module):
    """Every absolute module path referenced by `text` (the body of the file for `module`)."""
    inline = inline_modules(text)

    def scope(pos):
        return list(module) + [n for (a, b, n) in inline if a <= pos < b]

    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        tree = m.group(1).strip()
        tree = re.sub(r"\s+as\s+\w+", "", tree)
        for p in expand_use_tree(tree):
            found.append((p, m.start()))
    for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::(?:\w+|\{))+)", text):
        p = m.group(1)
        if p.endswith("{"):
            continue  # a use tree, handled above
        found.append((p, m.start()))
    out = []
    for p, pos in found:
        here = scope(pos)
        segs = [x for x in p.split("::") if x]
        if not segs:
            continue
        if segs[0] == "crate":
            out.append(tuple(segs[1:]))
        elif segs[0] == "super":
            base = here
            while segs and segs[0] == "super":
                base = base[:-1]
                segs = segs[1:]
            out.append(tuple(base + segs))
        elif segs[0] == "self":
            out.append(tuple(here + segs[1:]))
        elif module == () and segs[0] in TOP:
            out.append(tuple(segs))  # lib.rs names its own modules without `crate::`
    return out


def parse_reexports(files):
    """{module: {name: target_path}} from `pub use` / `pub(crate) use` lines."""
    table = {}
    for mod, text in files.items():
        t = {}
        for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            tree = m.group(1).strip()
            for p in expand_use_tree(re.sub(r"\s+as\s+\w+", "", tree)):
                segs = [x for x in p.split("::") if x]
                if not segs:
                    continue
                if segs[0] == "crate":
                    target = tuple(segs[1:])
                elif segs[0] == "super":
                    base = list(mod)
                    while segs and segs[0] == "super":
                        base, segs = base[:-1], segs[1:]
                    target = tuple(base + segs)
                elif segs[0] == "self":
                    target = tuple(list(mod) + segs[1:])
                else:
                    target = tuple(list(mod) + segs)
                t[target[-1]] = target
        table[mod] = t
    return table


def resolve(path, modules, reexports, seen=0):
    """The file module defining `path`: the longest prefix that is a file, re-exports followed."""
    for k in range(len(path), -1, -1):
        prefix = path[:k]
        if prefix in modules:
            rest = path[k:]
            if rest and rest[0] in reexports.get(prefix, {}) and seen < 8:
                target = reexports[prefix][rest[0]]
                if target != prefix + (rest[0],):
                    return resolve(target + rest[1:], modules, reexports, seen + 1)
            return prefix
    return None


def top(mod):
    return mod[0] if mod else "crate"


def sccs(nodes, edges):
    index, low, stack, on, res, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            res.append(comp)

    for v in nodes:
        if v not in index:
            visit(v)
    return res


def name(mod):
    return "::".join(mod) if mod else "lib.rs"


def main():
    global TOP
    texts, test_files = {}, set()
    for f in sorted(SRC.rglob("*.rs")):
        raw = strip_comments_and_strings(f.read_text())
        mod = file_module(f)
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", raw):
            test_files.add(mod + (m.group(1),))
        texts[mod] = strip_test_modules(raw)
    for t in test_files:
        texts.pop(t, None)  # a whole file of tests, e.g. adapt/tests.rs
    modules = set(texts)
    TOP = {m[0] for m in modules if m}
    reexports = parse_reexports(texts)
    edges = {}
    for mod, text in texts.items():
        deps = set()
        for p in paths_in(text, mod):
            r = resolve(p, modules, reexports)
            if r is not None and r != mod:
                deps.add(r)
        edges[mod] = deps

    problems = []
    for mod, deps in sorted(edges.items()):
        for d in sorted(deps):
            a, b = top(mod), top(d)
            if a == b:
                continue
            if a not in FLOORS or b not in FLOORS:
                problems.append(f"no floor for module `{a if a not in FLOORS else b}` (add it to FLOORS)")
                continue
            fa, fb = FLOORS[a], FLOORS[b]
            if fb > fa or (fb == fa and (a, b) not in SAME_FLOOR):
                problems.append(f"upward import: {name(mod)} (floor {fa}) uses {name(d)} (floor {fb})")

    # Cycles between files. A mod.rs naming its own children (declaring, re-exporting or
    # dispatching to them) is the folder's face, not a use: those edges are left out.
    fedges = {m: {d for d in deps if d[:len(m)] != m} for m, deps in edges.items()}
    for comp in sccs(sorted(texts), fedges):
        if len(comp) > 1:
            problems.append("import cycle: " + ", ".join(sorted(name(c) for c in comp)))

    # The public-API door: ffi/ and cli/ name only what the crate root exports.
    root_text = texts[()]
    public = set(re.findall(r"\bpub\s+(?:fn|struct|enum|type|trait|const|static|mod)\s+(\w+)", root_text))
    for m in re.finditer(r"\bpub\s+use\s+([^;]+);", root_text):
        tree = re.sub(r"\w+\s+as\s+(\w+)", r"\1", m.group(1).strip())  # a re-export's own name
        for p in expand_use_tree(tree):
            public.add(p.split("::")[-1])
    hidden_door = "__internal"
    for mod, text in sorted(texts.items()):
        if top(mod) != "ffi":
            continue
        for p in paths_in(text, mod):
            if p and p[0] != "ffi" and p[0] not in public:
                problems.append(f"{name(mod)} reaches past the public API: crate::{'::'.join(p)}")
            elif p and p[0] == hidden_door:
                problems.append(f"{name(mod)} uses the benches' door crate::{hidden_door}")
    for f in sorted((ROOT / "cli" / "src").rglob("*.rs")):
        text = strip_comments_and_strings(f.read_text())
        used = []
        for m in re.finditer(r"\buse\s+(bit_ttt[^;]*);", text):
            used.extend(expand_use_tree(re.sub(r"\s+as\s+\w+", "", m.group(1))))
        for m in re.finditer(r"(?<![\w:])bit_ttt((?:::\w+)+)", text):
            used.append("bit_ttt" + m.group(1))
        for u in used:
            segs = u.split("::")
            if len(segs) > 1 and (segs[1] not in public or segs[1] == hidden_door):
                problems.append(f"cli/{f.relative_to(ROOT / 'cli')} reaches past the public API: {u}")

    for mod, text in sorted(texts.items()):
        if top(mod) not in UNSAFE_ALLOWED and re.search(r"\bunsafe\b", text):
            problems.append(f"{name(mod)} uses `unsafe` outside {', '.join(sorted(UNSAFE_ALLOWED))}")

    if "--graph" in sys.argv:
        for mod, deps in sorted(edges.items()):
            print(f"{name(mod):28} -> {', '.join(name(d) for d in sorted(deps))}")
    for p in sorted(set(problems)):
        print(p)
    n_edges = sum(len(d) for d in edges.values())
    print(f"{len(modules)} files, {n_edges} imports between files, {len(set(problems))} problems",
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
