"""The package's layering: dependencies point down only, with no import cycle.

Layers, bottom to top: the core modules at the top of ``goodnet/`` (data,
models, inference, metrics, layers, plots, files, errors, base, options,
surgery, calibration, reports, keras2); ``goodnet.attacks`` and
``goodnet.defenses`` (independent of each other); ``goodnet.grading``; the
orchestrators (``repair``, ``demo``, ``export``, ``inspection``); ``goodnet.cli`` on top. Every
``import`` in the source counts, including those inside functions.
"""

import ast

import pytest

from repo_paths import REPO

PACKAGE = REPO / "goodnet"
CORE = {"goodnet", "goodnet.data", "goodnet.models", "goodnet.inference", "goodnet.metrics", "goodnet.layers",
        "goodnet.plots", "goodnet.files", "goodnet.errors", "goodnet.base", "goodnet.options", "goodnet.surgery",
        "goodnet.calibration", "goodnet.reports", "goodnet.keras2", "goodnet.training",
        "goodnet.features", "goodnet.privacy", "goodnet.robustness", "goodnet.executors"}
ORCHESTRATORS = {"goodnet.repair", "goodnet.demo", "goodnet.export", "goodnet.inspection", "goodnet.matrix"}


def _module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name, known):
    """The goodnet module an imported name refers to (``goodnet.x.y`` may be a module or a name in ``goodnet.x``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path, module, known):
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            if name.startswith("goodnet"):
                target = _resolve(name, known)
                if target and target != module:
                    found.add(target)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _layer(name):
    if name in CORE:
        return "core"
    for prefix, layer in (("goodnet.attacks", "attacks"), ("goodnet.defenses", "defenses"),
                          ("goodnet.grading", "grading"), ("goodnet.cli", "cli")):
        if name == prefix or name.startswith(prefix + "."):
            return layer
    if name in ORCHESTRATORS:
        return "orchestrator"
    return "unplaced"


ALLOWED = {
    "core": {"core"},
    "attacks": {"core", "attacks"},
    "defenses": {"core", "defenses"},
    "grading": {"core", "grading"},
    "orchestrator": {"core", "attacks", "defenses", "orchestrator"},
    "cli": {"core", "attacks", "defenses", "grading", "orchestrator", "cli"},
}


def test_every_module_has_a_layer(graph):
    assert [name for name in graph if _layer(name) == "unplaced"] == []


def test_dependencies_point_down(graph):
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                   if _layer(target) not in ALLOWED.get(_layer(name), set()))
    assert wrong == []


def test_command_modules_do_not_import_each_other(graph):
    shared = {"goodnet.cli", "goodnet.cli.options"}
    wrong = sorted(f"{name} -> {target}" for name, targets in graph.items() if _layer(name) == "cli"
                   for target in targets if _layer(target) == "cli" and target not in shared)
    assert wrong == []


def test_no_import_cycle(graph):
    # "goodnet" (the package's lazy re-exports) is every module's parent; edges into it are not cycles of code.
    edges = {name: {target for target in targets if target != "goodnet"} for name, targets in graph.items()}
    cycles = []
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_the_checker_sees_a_planted_violation(tmp_path):
    """The scan itself works: a relative import inside a function is found and resolved."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ..cli import main\n    import goodnet.defenses.strip\n")
    known = {"goodnet.cli", "goodnet.defenses.strip", "goodnet.attacks.probe"}
    assert _imports(source, "goodnet.attacks.probe", known) == {"goodnet.cli", "goodnet.defenses.strip"}
