#!/usr/bin/env python3
"""The structure drawing of src/: which file imports which, and whether any import runs in a circle.

Reads every `use` tree and every inline `crate::`/`super::`/`self::` path of src/**/*.rs, resolves
each to the file that defines the item (following `pub use` re-exports of a module's mod.rs), and
builds the graph of imports between files. `mod x;` declarations and `pub use` re-exports are
not imports (an import through a re-export is followed to the file that defines the item); a test module's
imports (`tests.rs`, `#[cfg(test)] mod tests { … }`) are left out, since tests sit beside what they
test by design.

    tools/structure.py            # prints the module-level drawing and the file cycles, if any
    tools/structure.py --dot      # Graphviz DOT of the file graph (render with `dot -Tsvg`)
    tools/structure.py --check    # exit 1 when a circle exists between files or top-level modules

Exit status 0 with --check means: the file graph and the top-level module graph are acyclic, so
every module sits in one layer and no import runs back up.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# The binary's file is the composition root: it may import anything and nothing imports it.
ROOTS = {"main.rs"}

ITEM_KINDS = r"(?:fn|struct|enum|trait|type|const|static|mod|union|macro_rules!)"


def strip_comments_and_strings(text: str) -> str:
    """Removes comments, string and char literals so that paths inside them are not read."""
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
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
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


def drop_test_modules(text: str) -> str:
    """Removes `#[cfg(test)] mod x { … }` blocks (their imports are the tests')."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[i:]


class Module:
    def __init__(self, path: tuple[str, ...], file: Path):
        self.path = path
        self.file = file
        raw = file.read_text()
        self.code = drop_test_modules(strip_comments_and_strings(raw))
        self.defined = set(re.findall(rf"\b{ITEM_KINDS}\s+(\w+)", self.code))
        self.uses = [u for u in parse_use_trees(self.code)]

    def rel(self) -> str:
        return str(self.file.relative_to(SRC))


def parse_use_trees(code: str) -> list[tuple[bool, list[str]]]:
    """Every `use` statement as (is_pub, expanded paths)."""
    result = []
    for m in re.finditer(r"(?:^|[;{}\s])(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", code):
        is_pub = bool(m.group(1))
        for path in expand(m.group(2).replace("\n", " ")):
            result.append((is_pub, path))
    return result


def expand(tree: str) -> list[list[str]]:
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    return [p for p in _expand(tree) if p]


def _expand(tree: str) -> list[list[str]]:
    if "{" not in tree:
        parts = [p for p in tree.split("::") if p]
        return [parts]
    head, _, rest = tree.partition("{")
    assert rest.endswith("}"), tree
    inner = rest[:-1]
    prefix = [p for p in head.split("::") if p]
    out = []
    for item in split_top(inner):
        for sub in _expand(item):
            out.append(prefix + sub)
    return out


def split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for c in s:
        if c == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        cur += c
    if cur:
        parts.append(cur)
    return [p for p in parts if p]


def load_modules() -> dict[tuple[str, ...], Module]:
    modules = {}
    for file in sorted(SRC.rglob("*.rs")):
        rel = file.relative_to(SRC)
        if file.name == "tests.rs":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (["lib"], ["main"]):
            parts = [] if parts == ["lib"] else ["<main>"]
        modules[tuple(parts)] = Module(tuple(parts), file)
    return modules


def resolve(modules, start: tuple[str, ...], segments: list[str], seen=None) -> Module | None:
    """The module file that defines the item `segments` names, starting from module `start`."""
    seen = seen or set()
    path = list(start)
    segs = list(segments)
    if not segs:
        return None
    if segs[0] == "crate":
        path, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                path = path[:-1]
            segs = segs[1:]
    elif tuple(path + [segs[0]]) not in modules:
        return None  # an external crate or a name in scope (not a child module)
    # Descend while the next segment is a module file.
    while segs and tuple(path + [segs[0]]) in modules:
        path.append(segs.pop(0))
    module = modules.get(tuple(path))
    if module is None:
        return None
    if not segs or segs[0] in ("*", "self") or segs[0] in module.defined:
        return module
    key = (module.path, segs[0])
    if key in seen:
        return module
    seen.add(key)
    # A re-export: follow the `use` that brings the name into this module.
    for _is_pub, use in module.uses:
        last = use[-1]
        if last == segs[0]:
            target = resolve(modules, module.path, use, seen)
            if target is not None:
                return target
    return module


def imports(modules) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in modules.values():
        edges = graph.setdefault(module.rel(), set())
        # A `pub use` is the module's face, not a use by its code: imports through it are
        # followed to the file that defines the item.
        paths = [use for is_pub, use in module.uses if not is_pub]
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", module.code):
            paths.append(m.group(1).split("::"))
        for path in paths:
            target = resolve(modules, module.path, path)
            if target is not None and target is not module:
                edges.add(target.rel())
    return graph


def top(rel: str) -> str:
    return Path(rel).with_suffix("").parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def module_graph(graph):
    mods: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        if src in ROOTS or src == "lib.rs":
            continue
        a = top(src)
        for dst in dsts:
            b = top(dst)
            if b != a and dst not in ROOTS and dst != "lib.rs":
                mods.setdefault(a, set()).add(b)
        mods.setdefault(a, set())
    return mods


def layers(graph: dict[str, set[str]]) -> list[list[str]]:
    """Layer 0 imports nothing; layer n imports only lower layers (needs an acyclic graph)."""
    level: dict[str, int] = {}

    def depth(v, trail=()):
        if v in level:
            return level[v]
        if v in trail:
            return 0
        level[v] = 1 + max((depth(w, trail + (v,)) for w in graph.get(v, ())), default=-1)
        return level[v]

    for v in graph:
        depth(v)
    out: list[list[str]] = []
    for v, n in level.items():
        while len(out) <= n:
            out.append([])
        out[n].append(v)
    return [sorted(layer) for layer in out]


def main() -> int:
    global SRC
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print the file graph as Graphviz DOT")
    parser.add_argument("--check", action="store_true", help="exit 1 on any circle")
    parser.add_argument("--src", type=Path, default=SRC, help="the source tree [src/]")
    args = parser.parse_args()
    SRC = args.src.resolve()
    modules = load_modules()
    graph = imports(modules)
    if args.dot:
        print("digraph src {\n  rankdir=BT; node [shape=box, fontsize=10];")
        for src in sorted(graph):
            for dst in sorted(graph[src]):
                print(f'  "{src}" -> "{dst}";')
        print("}")
        return 0
    mods = module_graph(graph)
    file_cycles = cycles(graph)
    mod_cycles = cycles(mods)
    print("Modules of src/ by layer (each imports only from layers below it):")
    for n, layer in enumerate(layers(mods)):
        print(f"  {n}: {' '.join(layer)}")
    print(f"{len(graph)} files, {sum(len(d) for d in graph.values())} imports between files")
    for comp in mod_cycles:
        print("circle between modules: " + " <-> ".join(comp))
    for comp in file_cycles:
        print("circle between files: " + " <-> ".join(comp))
        for src in comp:
            for dst in sorted(graph[src] & set(comp)):
                print(f"    {src} -> {dst}")
    if not file_cycles and not mod_cycles:
        print("no circle")
    return 1 if args.check and (file_cycles or mod_cycles) else 0


if __name__ == "__main__":
    sys.exit(main())
