"""The package's import graph, read from the source (ast, nothing imported): the module-level imports form no cycle,
nor do they with the function-local imports added (no cycle hidden by a deferred import), and the library never
imports the command line (`trl_dynamicpo.cli`), not even inside a function."""

import ast
from pathlib import Path

import pytest


PACKAGE = Path(__file__).resolve().parents[1] / "trl_dynamicpo"
# `python -m trl_dynamicpo` is the command line's entry point by definition.
CLI_ENTRY_POINTS = {"trl_dynamicpo.__main__"}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]):
    """The import statements that run when the module is imported (not those in functions or under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            yield from _module_level(node.orelse if _is_type_checking(node.test) else [*node.body, *node.orelse])
        elif isinstance(node, (ast.Try, ast.With, ast.For, ast.While)):
            blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
            blocks += [handler.body for handler in getattr(node, "handlers", [])]
            for block in blocks:
                yield from _module_level(block)
        elif isinstance(node, ast.ClassDef):
            yield from _module_level(node.body)


def _anywhere(body: list[ast.stmt]):
    """Every import statement of the module, function-local ones included (not those under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _anywhere(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                yield from _anywhere([child])
            elif isinstance(child, ast.excepthandler):
                yield from _anywhere(child.body)


def _targets(node: ast.stmt, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The package's modules an import statement of `module` loads (with their parent packages)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            prefix = ".".join([*base, *([node.module] if node.module else [])])
        else:
            prefix = node.module
        names = [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]
    loaded = set()
    for name in names:
        parts = name.split(".")
        # Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c; the importer's own packages are running already.
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in modules and not module.startswith(target + ".") and target != module:
                loaded.add(target)
    return loaded


def import_graph(root: Path, module_level: bool = True) -> dict[str, set[str]]:
    """module -> the package's modules it imports (at module level, or anywhere with `module_level=False`)."""
    modules = _modules(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = _module_level(tree.body) if module_level else _anywhere(tree.body)
        graph[name] = set().union(*(_targets(n, name, path.name == "__init__.py", modules) for n in nodes))
        if not module_level:  # import_module("trl_dynamicpo.cli.x") is an import too
            graph[name] |= {
                call.args[0].value
                for call in ast.walk(tree)
                if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant)
                and isinstance(call.args[0].value, str) and call.args[0].value in modules
            }  # fmt: skip
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def cli_importers(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    """Modules outside `<package>.cli` (and its entry points) that import it, with what they import from it."""
    cli = f"{package}.cli"
    inside = lambda name: name == cli or name.startswith(cli + ".")  # noqa: E731
    return {
        name: {t for t in targets if inside(t)}
        for name, targets in graph.items()
        if not inside(name) and name not in CLI_ENTRY_POINTS and any(inside(t) for t in targets)
    }


def test_module_level_imports_form_no_cycle():
    graph = import_graph(PACKAGE)
    assert {"trl_dynamicpo.pipeline.recipes", "trl_dynamicpo.sweep.run", "trl_dynamicpo.cli.parsing"} <= set(graph)
    assert "trl_dynamicpo.pipeline.recipes" in graph["trl_dynamicpo.sweep.run"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_cycle_hides_behind_a_function_local_import():
    graph = import_graph(PACKAGE, module_level=False)
    assert "trl_dynamicpo.pipeline.arguments" in graph["trl_dynamicpo.pipeline.recipes"]  # command_dataclasses
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_never_imports_the_command_line():
    graph = import_graph(PACKAGE, module_level=False)
    assert "trl_dynamicpo.cli.main" in graph["trl_dynamicpo.__main__"]  # the one entry point, allowed
    assert cli_importers(graph, "trl_dynamicpo") == {}


@pytest.fixture
def toy_package(tmp_path):
    """A package with a module-level cycle (a -> b -> a, through a relative import) and library code that reaches
    the command line through a function-local import and through `import_module`."""
    root = tmp_path / "toy"
    (root / "cli").mkdir(parents=True)
    files = {
        "__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n",
        "a.py": "from .b import thing\n",
        "b.py": "import toy.a\nthing = 1\n",
        "c.py": "def run():\n    from .cli import main\n",
        "d.py": "from importlib import import_module\nimport_module('toy.cli.main')\n",
        "cli/__init__.py": "",
        "cli/main.py": "from ..a import thing\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_the_checks_catch_a_cycle_and_a_cli_import(toy_package):
    graph = import_graph(toy_package)
    assert find_cycle(graph) == ["toy.a", "toy.b", "toy.a"]
    assert "toy.c" not in graph["toy"]  # imported under TYPE_CHECKING only
    assert cli_importers(graph, "toy") == {}  # the function-local import is not a module-level one
    everywhere = import_graph(toy_package, module_level=False)
    assert "toy.c" not in everywhere["toy"]
    assert cli_importers(everywhere, "toy") == {"toy.c": {"toy.cli", "toy.cli.main"}, "toy.d": {"toy.cli.main"}}
    del graph["toy.b"]
    assert find_cycle(graph) is None
