"""The code stays readable as it grows: size limits on the library and the app, and the app's
import name is its own (issue 11's "Done when")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_TREES = (ROOT / "plugins", ROOT / "agent")
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 120


def _sources() -> list[Path]:
    found = [p for tree in SOURCE_TREES for p in sorted(tree.rglob("*.py"))]
    assert len(found) > 30, f"the source trees moved? found only {found}"
    return found


def test_no_source_file_over_the_line_limit() -> None:
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert too_long == {}, f"split these files (over {MAX_FILE_LINES} lines): {too_long}"


def test_no_function_over_the_line_limit() -> None:
    too_long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # decorators included: they are part of what a reader has to take in
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                if length > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert too_long == {}, f"split these functions (over {MAX_FUNCTION_LINES} lines): {too_long}"


def test_the_app_imports_as_localtts_agent_and_agent_is_not_a_package(tmp_path: Path) -> None:
    """Outside the repository (a fresh working directory, no test path settings), the installed
    distribution provides `localtts_agent` and no generic top-level `agent`."""
    probe = (
        "import importlib.util, localtts_agent.cli.app\n"
        "print(importlib.util.find_spec('agent'))\n"
        "print(localtts_agent.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe],  # -I: no cwd or PYTHONPATH on sys.path
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    spec, location = out.stdout.splitlines()
    assert spec == "None"
    assert Path(location) == ROOT / "agent" / "localtts_agent" / "__init__.py"
