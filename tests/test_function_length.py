"""House rule: no function in engine/ over 60 lines unless its docstring says why ("Long because")."""
from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
MAX_LINES = 60
REASON = "Long because"


def long_functions_without_reason(source: str, max_lines: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function or method (nested ones too) longer than
    `max_lines` lines, decorators excluded, whose docstring lacks the REASON phrase."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > max_lines and REASON not in (ast.get_docstring(node) or ""):
                found.append((node.name, node.lineno, length))
    return found


def _function(name: str, body_lines: int, docstring: str) -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(body_lines))
    return f'def {name}():\n    """{docstring}"""\n{body}'


def test_checker_flags_a_long_function_and_accepts_a_stated_reason():
    long_plain = _function("too_long", MAX_LINES, "Does things.")  # 1 def + 1 docstring + 60 = 62 lines
    assert long_functions_without_reason(long_plain) == [("too_long", 1, MAX_LINES + 2)]
    justified = _function("justified", MAX_LINES, "Does things. Long because one pass.")
    assert long_functions_without_reason(justified) == []
    at_limit = _function("at_limit", MAX_LINES - 2, "Does things.")  # exactly 60 lines
    assert long_functions_without_reason(at_limit) == []


def test_checker_sees_methods_and_nested_functions():
    method = "class Holder:\n" + "".join("    " + line + "\n" for line in
                                         _function("method", MAX_LINES, "x").splitlines())
    assert [name for name, _, _ in long_functions_without_reason(method)] == ["method"]
    nested = "def outer():\n    \"\"\"Long because it wraps.\"\"\"\n" + "".join(
        "    " + line + "\n" for line in _function("inner", MAX_LINES, "x").splitlines())
    assert [name for name, _, _ in long_functions_without_reason(nested)] == ["inner"]


def test_no_function_in_engine_is_long_without_a_reason():
    offenders = [f"{path.relative_to(ENGINE.parent)}:{line} {name} ({length} lines)"
                 for path in sorted(ENGINE.rglob("*.py"))
                 for name, line, length in long_functions_without_reason(path.read_text(encoding="utf-8"))]
    assert offenders == [], f"functions over {MAX_LINES} lines without '{REASON}' in the docstring: {offenders}"
