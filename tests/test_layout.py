"""The layout's one hard rule, checked on the source (an import graph, not a mock): the update
algorithm in learner/ imports neither Ray nor actors/ (nor the runtime or the experiment tools
that sit above it), directly or through any project module it imports."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fwp_core", "agents", "actors", "learner", "configs", "runtime", "experiments")


def _module_file(name):
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name, source=None):
    """The absolute names a project module imports (relative imports resolved; every import,
    including those inside functions, since they run too). `source`: the module's text, if not
    read from its file."""
    file = _module_file(name)
    package = name if file is not None and file.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source if source is not None else file.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)   # from pkg import module
    # A submodule import runs its package's __init__ as well.
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def _closure(start):
    seen, todo, external = set(), list(start), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in _imports(name):
            if imported.split(".")[0] in PACKAGES:
                if _module_file(imported) is not None:
                    todo.append(imported)
            else:
                external.add(imported.split(".")[0])
    return seen, external


def test_the_update_algorithm_imports_neither_ray_nor_actors():
    algorithm = [f"learner.{p.stem}" if p.stem != "__init__" else "learner" for p in (ROOT / "learner").glob("*.py")]
    assert {"learner.batch", "learner.vtrace", "learner.losses", "learner.learner", "learner.checkpoint"} <= set(algorithm)
    modules, external = _closure(algorithm)
    assert "ray" not in external, sorted(external)
    reached = {m.split(".")[0] for m in modules}
    assert not reached & {"actors", "runtime", "experiments"}, sorted(m for m in modules if m.split(".")[0] in
                                                                      {"actors", "runtime", "experiments"})
    assert "torch" in external and "agents.agent" in modules   # the check does see through imports


def test_the_check_catches_an_import_of_ray_or_the_runtime():
    """A learner module importing ray inside a function, and the runtime relatively: both seen,
    and the runtime's own imports lead on to actors/."""
    names = _imports("learner.probe", "def f():\n    import ray\n    from ..runtime import service\n")
    assert {"ray", "runtime", "runtime.service"} <= names
    modules, _ = _closure(["runtime.service"])
    assert "actors.rollout" in modules
