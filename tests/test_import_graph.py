"""The import graph points one way, and the benchmarks call the step instead of copying it.

Components know nothing of methods, evaluation, the command line or training; methods
know nothing of evaluation (diagnostics are read from a step's output); evaluation
knows nothing of the command line or the example scripts. The benchmarks time and
evaluate ``method(images, ids)``: none lays out columns, builds targets or computes the
loss itself.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "softcontrast"

#: (importing package, imported packages it must not import).
FORBIDDEN = [
    ("softcontrast.methods", ("softcontrast.evaluation",)),
    ("softcontrast.evaluation", ("softcontrast.cli", "examples")),
    ("softcontrast.components", ("softcontrast.methods", "softcontrast.evaluation", "softcontrast.cli",
                                 "softcontrast.training")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (``from a import b`` names ``a`` and ``a.b``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_modules_to_check():
    names = {module_name(path) for path in MODULES}
    assert {"softcontrast.methods.base", "softcontrast.evaluation.command", "softcontrast.components.columns"} <= names


@pytest.mark.parametrize("importer, forbidden", FORBIDDEN, ids=[importer for importer, _ in FORBIDDEN])
def test_no_import_runs_against_the_graph(importer, forbidden):
    wrong = []
    for path in MODULES:
        if not within(module_name(path), importer):
            continue
        for module in imported_modules(path):
            if any(within(module, target) or module.split(".")[0] == target for target in forbidden):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_evaluation_loads_no_script_by_path():
    for path in MODULES:
        if within(module_name(path), "softcontrast.evaluation"):
            source = path.read_text()
            assert "spec_from_file_location" not in source and "run_path" not in source, path


def step_copies(path: Path) -> list[str]:
    """What in a benchmark would re-implement the step: laying out columns, calling a method's
    target builder, the step's loss, or the parts the step consists of."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "build" and isinstance(node.value, ast.Name) \
                and node.value.id in ("Columns", "LogitColumns", "ViewColumns"):
            found.append(f"line {node.lineno}: {node.value.id}.build")
        elif isinstance(node, ast.Name) and node.id in ("soft_cross_entropy", "Columns", "LogitColumns"):
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr == "soft_cross_entropy":
            found.append(f"line {node.lineno}: .soft_cross_entropy")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("targets", "target_builder", "_columns", "_contrast", "_mixed_term"):
            found.append(f"line {node.lineno}: .{node.func.attr}(...)")
        elif isinstance(node, ast.alias) and node.name in ("soft_cross_entropy", "Columns", "LogitColumns"):
            found.append(f"line {node.lineno}: imports {node.name}")
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_call_the_method_instead_of_copying_its_step(path):
    assert not step_copies(path), f"{path.name} re-implements the step: {step_copies(path)}"


def test_the_step_copy_check_sees_a_copy(tmp_path):
    copy = tmp_path / "copy.py"
    copy.write_text("from softcontrast.components.losses import soft_cross_entropy\n"
                    "def step(method, keys, ids, query):\n"
                    "    columns = Columns.build(keys[:, None], ids, method.memory)\n"
                    "    targets = method.targets(columns, columns.rows(ids, [None]))\n"
                    "    return soft_cross_entropy(columns.scores(query), targets.target, targets.mask)\n")
    assert len(step_copies(copy)) >= 4
    assert step_copies(ROOT / "softcontrast" / "methods" / "base.py")  # the step itself does all of it
