"""No import cycle inside ``transfuse/`` (issue 17, item 8).

The graph is built from the source with :mod:`ast`, without importing anything. What counts as an
edge ``A → B`` (both modules of ``transfuse``):

- every ``import``/``from … import`` statement in ``A``, at module level, in class bodies and in
  ``if``/``try`` blocks, **and inside functions** — a lazy import only hides a circle until
  someone calls the function (the circle of issue 17, ``inits.adapt → models → models.inflate →
  inits.adapt``, ran through two lazy imports); only ``if TYPE_CHECKING:`` blocks do not count;
- ``from P import name`` is an edge to ``P.name`` when that is a module, else to ``P``;
- importing ``P.Q.R`` also imports the packages ``P`` and ``P.Q``: those are edges too, except the
  packages that contain ``A`` (Python has already started them before ``A`` runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "transfuse"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is_package)}`` of every module under ``transfuse/``."""
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if pkg else parts)] = (p, pkg)
    return out


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for n in child.orelse:
                    visit(ast.Module(body=[n], type_ignores=[]))
            else:
                visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` inside ``transfuse`` (see the module docstring)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}  # A and its packages
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            else:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                subs = [f"{base}.{a.name}" for a in node.names]
                named = [s for s in subs if s in mods] + ([base] if any(s not in mods for s in subs) else [])
            for t in named:
                for i in range(t.count(".") + 1):
                    m = t.rsplit(".", i)[0]
                    if m in mods and m not in own:
                        targets.add(m)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search, as ``[a, b, …, a]``."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                dfs(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    return cycles


def test_the_graph_sees_every_module_and_the_known_edges():
    g = import_graph()
    assert len(g) > 50 and "transfuse.models.inflate" in g and "transfuse.inits.adapt" in g
    # inits build on models, never the other way round
    assert "transfuse.models.inflate" in g["transfuse.inits.adapt"]
    assert "transfuse.models" in g["transfuse.inits.adapt"]  # the package runs first
    assert not any(t.startswith("transfuse.inits") for m, ts in g.items()
                   if m.startswith("transfuse.models") for t in ts)


def test_cycle_finder_reports_a_lazy_import_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(g) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_transfuse():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_adapt_input_conv_importable_where_documented():
    from transfuse.inits import adapt_input_conv as a
    from transfuse.inits.adapt import adapt_input_conv as b
    from transfuse.models import adapt_input_conv as c

    assert a is b is c


def _owner(module: str) -> str:
    """The part of ``transfuse`` a module belongs to: ``transfuse.study.runner`` → ``transfuse.study``;
    a top-level module is its own part (``transfuse.store``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def private_imports() -> list[str]:
    """``"A imports B._name"`` for every import in ``A`` of an underscore name of a module ``B`` in
    another part of ``transfuse`` (see :func:`_owner`), and of a private module of another part
    (``transfuse.data._medmnist_classes``). Private top-level modules (``transfuse._registry``)
    are the whole package's shared internals: importing them is fine, their ``_names`` are not."""
    mods = _modules()
    found = []
    for name, (path, is_pkg) in mods.items():
        here = name if is_pkg else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                pairs = [(a.name, None) for a in node.names]
            else:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                pairs = [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in mods else (base, a.name)
                         for a in node.names]
            for target, attr in pairs:
                if not target.startswith("transfuse.") or _owner(target) == _owner(name):
                    continue
                private_module = any(p.startswith("_") and p != "__init__" for p in target.split(".")[2:])
                if private_module or (attr is not None and attr.startswith("_")):
                    found.append(f"{name} imports {target}{'.' + attr if attr else ''}")
    return sorted(set(found))


def test_private_import_finder_sees_a_known_pattern(tmp_path):
    assert _owner("transfuse.study.runner") == "transfuse.study" and _owner("transfuse.store") == "transfuse.store"


def test_no_module_imports_another_parts_private_name():
    bad = private_imports()
    assert not bad, "private names imported across packages (make them public):\n" + "\n".join(bad)


def test_no_file_over_600_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, f"files over 600 lines (split them): {long}"


def test_one_atomic_write_helper():
    """Every write-to-temporary-then-rename goes through transfuse.atomic (issue 30)."""
    import re

    pattern = re.compile(r"os\.replace\(|os\.rename\(|\btmp\w*\)?\.(replace|rename)\(")
    found = [f"{p.relative_to(ROOT.parent)}:{i}" for p in ROOT.rglob("*.py") if p.name != "atomic.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, f"write through transfuse.atomic.atomic_write instead: {found}"


#: What the statistics (transfuse.decide) may import: the store and what the store stands on.
BELOW_THE_STORE = ("transfuse.decide", "transfuse.store", "transfuse.config", "transfuse.errors",
                   "transfuse.arms", "transfuse.yaml_files", "transfuse.atomic")


def test_statistics_import_nothing_above_the_store():
    g = import_graph()
    above = {m: sorted(t for t in ts if not t.startswith(BELOW_THE_STORE))
             for m, ts in g.items() if m.startswith("transfuse.decide")}
    assert "transfuse.decide.verdicts" in g and not any(above.values()), above


def test_reports_never_import_the_runner():
    g = import_graph()
    runner = {m: sorted(t for t in ts if t.startswith(("transfuse.study.runner", "transfuse.study.remote",
                                                       "transfuse.study.task", "transfuse.run")))
              for m, ts in g.items() if m.startswith("transfuse.report")}
    assert not any(runner.values()), runner


def test_fit_reads_in_one_sitting():
    """``fit()`` stays at most 120 lines (docstring included): new behaviour goes into a named part
    (transfuse/train/parts.py), not into the loop."""
    import inspect

    from transfuse.train.loop import fit

    n = len(inspect.getsource(fit).splitlines())
    assert n <= 120, f"fit() is {n} lines; move the new work into transfuse.train.parts"
