"""The import rule of notes/architecture.md, checked on the source (no imports executed).

* the kernel layer (``attn_numba/kernels/``) imports only itself, ``attn_numba.problem`` and,
  inside a function, ``attn_numba.launcher`` (the disk-cache loader) and
  ``attn_numba.tensormap`` (TMA descriptors for a plan); never the call path, the API, the
  backward's host side, benchmarks, explain or reports;
* ``attn_numba.problem``, ``attn_numba.arrays`` and ``attn_numba.tensormap`` import nothing
  of the package;
* no import circle among the package's modules, counting imports inside functions too.
"""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "attn_numba")
KERNEL_MAY_IMPORT = ("attn_numba.kernels", "attn_numba.problem")
KERNEL_MAY_IMPORT_LAZILY = ("attn_numba.launcher", "attn_numba.tensormap")
LEAVES = ("attn_numba.problem", "attn_numba.arrays", "attn_numba.tensormap")


def _modules():
    mods = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return mods


def _imports(mods, name):
    """[(imported module, lazy)] of module ``name``: absolute names of package modules,
    ``lazy`` when the import statement is inside a function."""
    path = mods[name]
    pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    tree = ast.parse(open(path).read())
    lazy_nodes = {id(n) for f in ast.walk(tree)
                  if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod
                       for a in node.names]
        for t in targets:
            while t and t not in mods:       # a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.append((t, id(node) in lazy_nodes))
    return out


def _inside(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_kernel_layer_imports_only_what_the_rule_allows():
    mods = _modules()
    bad = [(m, t) for m in mods if _inside(m, ("attn_numba.kernels",))
           for t, lazy in _imports(mods, m)
           if not _inside(t, KERNEL_MAY_IMPORT)
           and not (lazy and _inside(t, KERNEL_MAY_IMPORT_LAZILY))]
    assert not bad, bad


def test_leaf_modules_import_nothing_of_the_package():
    mods = _modules()
    bad = [(m, t) for m in LEAVES for t, _ in _imports(mods, m)]
    assert not bad, bad


def _cycles(graph):
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _graph(mods):
    # a package's __init__ importing its own submodules lazily (registries) is no circle:
    # only edges out of a package into its children are dropped
    return {m: {t for t, _ in _imports(mods, m) if not t.startswith(m + ".")} for m in mods}


def test_no_import_circle():
    assert _cycles(_graph(_modules())) == []


def test_the_cycle_finder_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
