"""The package's dependency structure: one direction, no import circles.

Every ``import mdstream.X`` / ``from mdstream[.X] import ...`` in the package is
read statically, including the ones inside functions (a lazy import hides a
circle from the interpreter, not from the design), and

* the graph of mdstream modules must have no cycle;
* the modules in :data:`LAYERS` import only from their own layer or below:
  the foundation, then the write plan, then the file formats, then the
  schedules that cut files into plans, then the ring/callback/sinks and the
  pipeline, then the platform writers, then the command line.

A new module that is in no layer is still checked for circles.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mdstream"

#: Lowest first.  A module may import modules of its own layer or a lower one.
LAYERS: list[set[str]] = [
    {"errors", "_private_files", "_files", "_mapping", "dbghelp", "_dbghelp_layout", "sample"},  # foundation
    {"plan"},                                            # the write list every format and schedule shares
    {"minidump", "trace", "spill"},                      # file formats
    {"schedules"},                                       # files cut into plans
    {"_ring", "_sinks", "_callback", "pipeline"},        # the ring, the callback and the consumer pipeline
    {"simulator", "_linux", "linux", "windows"},   # producers: the simulator and the platform writers
    {"bench", "cli", "cli_reports", "cli_crash", "cli_ring", "_entry", "__init__", "__main__"},  # the command line, the package's front
]
FORMATS = {"minidump", "trace", "spill"}

_PYX_IMPORT = re.compile(r"^\s*(?:from\s+(mdstream(?:\.[\w.]+)?)\s+import\s+([\w\s,()]+)|import\s+(mdstream(?:\.[\w.]+)?))",
                         re.MULTILINE)


def _module_files() -> dict[str, Path]:
    """Module name (relative to the package, dotted, ``__init__`` for the package) -> file."""
    out = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".pyx") or "build" in path.relative_to(PACKAGE).parts:
            continue
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, names: list[str], known: set[str]) -> set[str]:
    """The mdstream modules an import statement depends on."""
    rel = module[len("mdstream"):].lstrip(".")
    if not rel:  # from mdstream import X: a submodule, or a name the package defines
        return {n if n in known else "__init__" for n in names}
    deps: set[str] = set()
    for n in names or [""]:
        sub = f"{rel}.{n}" if n else ""
        if sub in known:  # from package import submodule: the submodule, not the package's front
            deps.add(sub)
        elif rel in known:
            deps.add(rel)
        else:
            deps |= {rel.split(".")[0]} & known or {"__init__"}
    return deps


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    deps: set[str] = set()
    text = path.read_text()
    if path.suffix == ".pyx":
        for m in _PYX_IMPORT.finditer(text):
            if m.group(3):
                deps |= _resolve(m.group(3), [], known)
            else:
                names = [n.strip() for n in m.group(2).replace("(", " ").replace(")", " ").split(",")]
                deps |= _resolve(m.group(1), [n.split()[0] for n in names if n], known)
        return deps - {name}
    package = name.rsplit(".", 1)[0] if "." in name else ""
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mdstream" or alias.name.startswith("mdstream."):
                    deps |= _resolve(alias.name, [], known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside a subpackage
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(["mdstream", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "mdstream" or module.startswith("mdstream."):
                deps |= _resolve(module, [a.name for a in node.names], known)
    return deps - {name}


def dependency_graph() -> dict[str, set[str]]:
    files = _module_files()
    known = set(files)
    return {name: _imports(name, path, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if colour.get(dep, BLACK) == GREY:
                return stack[stack.index(dep):] + [dep]
            if colour.get(dep) == WHITE:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_finds_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    known = {"errors", "plan", "linux"}
    assert _resolve("mdstream", ["errors", "Ring"], known) == {"errors", "__init__"}
    assert _resolve("mdstream.plan", ["WritePlan"], known) == {"plan"}
    assert _resolve("mdstream.pkg", ["mod", "name"], {"pkg", "pkg.mod"}) == {"pkg.mod", "pkg"}


def test_the_checker_sees_lazy_imports(tmp_path):
    """An import inside a function counts: that is how the old minidump -> schedules circle hid."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from mdstream.schedules import _map_file\n    return _map_file\n")
    assert _imports("minidump", f, {"minidump", "schedules"}) == {"schedules"}
    f = tmp_path / "m.pyx"
    f.write_text("cdef int raise_error(int status) except -1:\n    from mdstream import linux\n")
    assert _imports("_linux", f, {"_linux", "linux"}) == {"linux"}


def test_no_import_circle():
    cycle = find_cycle(dependency_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_layered_module_exists():
    files = _module_files()
    missing = sorted(m for layer in LAYERS for m in layer if m not in files)
    assert not missing, f"LAYERS names modules that do not exist: {missing}"


def test_dependencies_run_one_way():
    graph = dependency_graph()
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    upward = [(m, d) for m, deps in graph.items() if m in level
              for d in deps if d in level and level[d] > level[m]]
    assert not upward, "modules importing from a layer above them: " + \
        ", ".join(f"{m} -> {d}" for m, d in sorted(upward))


def test_formats_import_only_the_foundation_and_the_plan():
    graph = dependency_graph()
    allowed = LAYERS[0] | LAYERS[1] | FORMATS
    for fmt in sorted(FORMATS):
        assert graph[fmt] <= allowed, f"{fmt} imports {sorted(graph[fmt] - allowed)}"


def test_formats_load_without_the_layers_above():
    """At run time too: importing a format (with the package's front bypassed, as
    the pure-Python tests do) loads nothing from the schedules, pipeline or CLI."""
    code = (
        "import sys, types, importlib\n"
        f"pkg = types.ModuleType('mdstream'); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['mdstream'] = pkg\n"
        "for m in ('plan', 'minidump', 'trace', 'spill'):\n"
        "    importlib.import_module('mdstream.' + m)\n"
        "print(' '.join(sorted(k for k in sys.modules if k.startswith('mdstream.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = {m.split(".", 1)[1] for m in out.stdout.split()}
    assert {"plan", "minidump", "trace", "spill"} <= loaded
    assert loaded <= LAYERS[0] | LAYERS[1] | FORMATS, f"formats pulled in {sorted(loaded - LAYERS[0] - LAYERS[1] - FORMATS)}"


@pytest.mark.parametrize("name", ["WritePlan", "backward_writes"])
def test_schedules_still_exports_the_plan(name):
    from mdstream import plan, schedules

    assert getattr(schedules, name) is getattr(plan, name)
    assert name in schedules.__all__
