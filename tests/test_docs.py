"""The README tells the truth about the commands CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && python -m pytest tests -q"
    assert f"```bash\n{command}\n```" in readme
    # its own line in CI, whose `set -e` makes its failure CI's (the sanitizer run, in the background beside it,
    # is waited for after it)
    assert command in ci.splitlines()
    assert "set -euo pipefail" in ci.splitlines()
