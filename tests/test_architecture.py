"""The layout of docs/architecture.md, held against the code: import direction, no circles, named exit codes.

Everything here reads source files (an AST walk, function-level imports included); nothing is imported.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DLKIT = ROOT / "dlkit"
EXPERIMENT_PACKAGES = ("calodnn", "lartpcdnn", "clustercount")

#: The floors of dlkit, bottom up (docs/architecture.md): a module may import from its own floor and below.
#: ``dlkit.scan`` runs experiments; the scan analysis reads runs and ledgers; both sit above what they use.
#: The physics analysis (ROC, fits, plots, intervals) is used by the experiments: it is core.
FLOORS = {
    "core": 0,            # protocol, config, metadata, data pipeline, callbacks, wrapper, experiment, physics analysis
    "scan": 1,            # dlkit.scan
    "scan analysis": 2,   # dlkit.analysis.scan, dlkit.analysis.report, dlkit.analysis (it re-exports both), ScanAnalysis
}
SCAN_ANALYSIS = ("dlkit.analysis.scan", "dlkit.analysis.report", "dlkit.ScanAnalysis")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def floor_of(module: str) -> str:
    if module == "dlkit.scan" or module.startswith("dlkit.scan."):
        return "scan"
    if module == "dlkit.analysis" or any(module == m or module.startswith(m + ".") for m in SCAN_ANALYSIS):
        return "scan analysis"
    return "core"


def dlkit_modules() -> dict[str, Path]:
    return {module_name(p): p for p in DLKIT.rglob("*.py")}


def imported_names(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(module imported from, names) for every import statement of the file, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def import_graph() -> dict[str, set[str]]:
    """dlkit's modules and the dlkit modules each imports (a package's __init__ re-exporting its own
    submodules is left out: that is what makes a package, not a dependency)."""
    modules = dlkit_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for base, names in imported_names(path, module):
            candidates = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules] or [base]
            for target in candidates:
                while target and target not in modules:  # `import dlkit.scan.ledger` style, or a name
                    target = target.rpartition(".")[0]
                if not target or target == module:
                    continue
                if path.name == "__init__.py" and target.startswith(module + "."):
                    continue
                targets.add(target)
        graph[module] = targets
    return graph


def test_imports_run_down_the_floors():
    wrong = [f"{m} ({floor_of(m)}) imports {t} ({floor_of(t)})"
             for m, targets in import_graph().items() for t in sorted(targets)
             if FLOORS[floor_of(t)] > FLOORS[floor_of(m)]]
    assert not wrong, "imports that run back up the floors of docs/architecture.md:\n" + "\n".join(wrong)


def test_dlkit_imports_no_experiment_package():
    wrong = []
    for module, path in dlkit_modules().items():
        for base, _ in imported_names(path, module):
            if base.split(".")[0] in EXPERIMENT_PACKAGES:
                wrong.append(f"{module} imports {base}")
    assert not wrong, "dlkit must not import an experiment package:\n" + "\n".join(wrong)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    circles = strongly_connected(import_graph())
    assert not circles, "import circles among dlkit's modules:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_circles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


# -- exit codes ---------------------------------------------------------------------------------------------
_CODE_NAMES = {"code", "exit_code", "rc", "returncode"}


def _name(node) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _int(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def exit_code_literals(path: Path) -> list[str]:
    """Numeric exit codes in a file: returned by a CLI's main, passed to an exit, compared with a code."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        is_main = func.name in ("main", "cli", "run_main") or func.name.endswith("_main")
        for node in ast.walk(func):
            if is_main and isinstance(node, ast.Return) and _int(node.value):
                found.append(f"{path}:{node.lineno}: return {node.value.value}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if _name(node.func) in ("exit", "_exit", "SystemExit") and node.args and _int(node.args[0]):
                found.append(f"{path}:{node.lineno}: {_name(node.func)}({node.args[0].value})")
            found += [f"{path}:{node.lineno}: {kw.arg}={kw.value.value}" for kw in node.keywords
                      if kw.arg in _CODE_NAMES and _int(kw.value)]
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            exact = all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops)
            if not exact or not any(_name(o) in _CODE_NAMES for o in operands):  # (code < 0: killed by a signal)
                continue
            for o in operands:
                elements = o.elts if isinstance(o, (ast.Tuple, ast.List, ast.Set)) else [o]
                # an outside program's success (returncode != 0) is not one of dlkit's codes
                literal = [e.value for e in elements if _int(e) and not (e.value == 0 and any(
                    _name(x) == "returncode" for x in operands))]
                if literal:
                    found.append(f"{path}:{node.lineno}: compared with {literal}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [f"{path}:{node.lineno}: shell {m.group(0)!r}" for m in re.finditer(r"-eq \d+", node.value)]
    return found


def test_every_exit_code_is_a_named_constant():
    files = [p for p in DLKIT.rglob("*.py") if p.name != "protocol.py"]
    for package in EXPERIMENT_PACKAGES:
        files += list((ROOT / package).rglob("*.py"))
    literals = [line for path in sorted(files) for line in exit_code_literals(path)]
    assert not literals, "exit codes are dlkit.protocol's constants:\n" + "\n".join(literals)


def test_the_exit_code_check_sees_literals(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import sys\ndef main():\n    if code == 75:\n        sys.exit(2)\n    return 0\n"
                      "def f(proc):\n    return proc.returncode != 0\nS = 'if [ $code -eq 75 ]'\n")
    assert sorted(line.split(": ", 1)[1] for line in exit_code_literals(sample)) == [
        "compared with [75]", "exit(2)", "return 0", "shell '-eq 75'"]


# -- long functions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("package", ["scan", "generators"])
def test_no_function_longer_than_60_lines(package):
    long = []
    for path in sorted((DLKIT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "functions longer than 60 lines:\n" + "\n".join(long)
