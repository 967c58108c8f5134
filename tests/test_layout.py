"""The house rules that a reader relies on: no two modules of imet import each other (lazy imports
inside functions count too), the package stays a few dozen modules, and README's Layout section
is a true map: every module is on it, and each line imports only from the lines under it."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMET = REPO / "imet"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file below `package`."""
    root = package.parent
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `name` imports anywhere in its file (top level, inside
    functions, under `if TYPE_CHECKING`): each `from A import b` counts as A.b when that is a
    module, else as A."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycles(package: Path) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), sorted."""
    modules = module_files(package)
    graph = {name: sorted(imports_of(name, path, modules)) for name, path in modules.items()}
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_module_of_imet_takes_part_in_an_import_cycle():
    assert import_cycles(IMET) == []


def test_the_cycle_walk_sees_a_lazy_import_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (package / "c.py").write_text("def g():\n    import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")
    assert import_cycles(package) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_imet_stays_a_few_dozen_modules():
    assert len(module_files(IMET)) <= 80


def readme_layout() -> list[str]:
    """The dotted names that README's Layout block lists, top line first."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    return [line.split()[0].rstrip("/").removesuffix(".py").replace("/", ".")
            for line in block.splitlines() if line.startswith("imet/")]


def test_readme_layout_maps_every_module_and_its_imports_point_down():
    layout = readme_layout()
    modules = module_files(IMET)

    def entry(name: str) -> int:
        owners = [i for i, prefix in enumerate(layout)
                  if name == prefix or name.startswith(prefix + ".")]
        assert owners, f"{name} is on no line of README's Layout"
        return owners[-1]

    upward = [(name, target) for name, path in modules.items()
              if name not in ("imet", "imet.__main__")
              for target in imports_of(name, path, modules)
              if target != "imet" and entry(target) < entry(name)]
    assert upward == []
