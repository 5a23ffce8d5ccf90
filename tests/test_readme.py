"""README promises that must not drift: CI runs its exact test command, then the slow tests; the component list is
current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", text, re.S)
    assert match, "README.md must mark its test command with <!-- test-command --> before a bash block"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = readme_test_command()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
    assert "pytest" in command


def test_ci_runs_the_slow_tests_after_the_default_selection() -> None:
    # The README's command runs the default selection (pyproject's addopts deselect `slow`); CI must run the
    # slow tests as a second, required step: `set -e` makes a failure of either stop the script.
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert any(line.startswith("set -e") for line in ci_lines)
    assert ci_lines[ci_lines.index(readme_test_command()) + 1] == "python -m pytest -q -m slow"


def test_readme_component_list_is_current() -> None:
    # A fresh interpreter: in this one, other tests may have registered components of their own.
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "update_readme.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_quick_start_runs() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"## Quick start\s*```python\n(.+?)\n```", text, re.S).group(1)
    first_model = next(line for line in code.splitlines() if "create_model" in line)
    assert "pretrained=True" in first_model, "the quick start shows the pretrained model first"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tensor(" in result.stdout and "anderson" in result.stdout
