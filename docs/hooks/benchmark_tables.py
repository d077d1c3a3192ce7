"""MkDocs hook: fills the Benchmarks page from the ``benchmarks/`` folder.

``<!-- benchmark-scripts -->`` becomes a table of the scripts ``benchmarks/*.py``:
the first line of each one's module docstring and its ``Run:`` command.
``<!-- benchmark-results -->`` becomes one section per ``benchmarks/results/*.json``
file, with its scalar fields as a two-column table and each list of records as a
table of its own; with no results, a note that says how to produce them. A results
file may bring its own presentation: ``<stem>.md`` next to it replaces the generic
tables, and ``<stem>.png`` is shown below them (the hook adds it to the site under
``benchmark-results/``).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- benchmark-results -->"
SCRIPTS_MARKER = "<!-- benchmark-scripts -->"
PAGE = "benchmarks.md"
IMAGES = "benchmark-results"

NO_RESULTS = (
    "!!! note \"No results yet\"\n"
    "    `benchmarks/results/` holds no JSON file in this checkout. Run the benchmark\n"
    "    scripts listed above; each writes its JSON there, and the next docs build\n"
    "    (`mkdocs build`) shows it on this page.\n"
)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _records_table(records: list[dict[str, Any]]) -> str:
    rows = [_flatten(r) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render(data: Any) -> str:
    """Markdown tables of one results file."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return _records_table(data)
    if not isinstance(data, dict):
        return f"```json\n{json.dumps(data, indent=2)}\n```"
    parts = []
    tables = {k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    scalars = _flatten({k: v for k, v in data.items() if k not in tables})
    if scalars:
        parts.append("| field | value |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in scalars.items()))
    for key, records in tables.items():
        parts.append(f"**{key}**\n\n" + _records_table(records))
    return "\n\n".join(parts)


def results_markdown(results_dir: Path) -> str:
    """The Benchmarks page's results section for the JSON files in ``results_dir``."""
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    if not files:
        return NO_RESULTS
    sections = []
    for path in files:
        table = path.with_suffix(".md")
        try:
            body = table.read_text(encoding="utf-8") if table.is_file() else render(
                json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as error:
            body = f"!!! warning \"Unreadable\"\n    `{path.name}` is not valid JSON ({error.msg})."
        if path.with_suffix(".png").is_file():
            body += f"\n\n![{path.stem}]({IMAGES}/{path.stem}.png)"
        sections.append(f"### {path.stem}\n\nFrom `benchmarks/results/{path.name}`.\n\n{body}\n")
    return "\n".join(sections)


def _command(docstring: str) -> str | None:
    """The script's command from its docstring: a ``Run:`` line, or the first
    command line (``python``, ``accelerate launch``, ``torchrun``), joining
    backslash continuations."""
    run = re.search(r"^Run:\s*``?(.+?)``?\s*$", docstring, re.MULTILINE)
    if run:
        return run.group(1)
    lines = docstring.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"\s*(python|accelerate launch|torchrun)\s", line):
            parts = [line.strip()]
            while parts[-1].endswith("\\") and index + 1 < len(lines):
                index += 1
                parts[-1] = parts[-1][:-1].rstrip()
                parts.append(lines[index].strip())
            return " ".join(parts)
    return None


def scripts_markdown(benchmarks_dir: Path) -> str:
    """A table of the benchmark scripts: what each measures and how to run it."""
    rows = []
    for path in sorted(benchmarks_dir.glob("*.py")) if benchmarks_dir.is_dir() else []:
        if path.name.startswith("_"):
            continue
        try:
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        except SyntaxError:
            docstring = ""
        summary = docstring.strip().splitlines()[0] if docstring.strip() else ""
        command = _command(docstring) or f"python benchmarks/{path.name}"
        rows.append(f"| `benchmarks/{path.name}` | {_cell(summary)} | `{_cell(command)}` |")
    if not rows:
        return "No benchmark script is in this checkout yet."
    return "| script | measures | command |\n|---|---|---|\n" + "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs hook signature)
    """Replaces the marker on the Benchmarks page by the results tables."""
    if page.file.src_uri != PAGE or MARKER not in markdown:
        return markdown
    benchmarks = Path(config["config_file_path"]).parent / "benchmarks"
    markdown = markdown.replace(SCRIPTS_MARKER, scripts_markdown(benchmarks))
    return markdown.replace(MARKER, results_markdown(benchmarks / "results"))


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs hook signature)
    """Adds the charts ``benchmarks/results/<stem>.png`` of the results files to the site."""
    from mkdocs.structure.files import File

    results = Path(config["config_file_path"]).parent / "benchmarks" / "results"
    for chart in sorted(results.glob("*.png")) if results.is_dir() else []:
        if chart.with_suffix(".json").is_file():
            files.append(File.generated(config, f"{IMAGES}/{chart.name}", abs_src_path=str(chart)))
    return files
