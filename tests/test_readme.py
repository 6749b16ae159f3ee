"""The README's quick start does all the set-up from a fresh clone, and CI runs exactly its test command."""

import configparser
import subprocess

from repo_paths import REPO


def _test_command():
    """The test command as .ci/run reads it from the README (the same sed expression, run from .ci/run)."""
    script = (REPO / ".ci" / "run").read_text()
    expression = next(line for line in script.splitlines() if line.startswith("test_command=$(sed"))
    return subprocess.run(["bash", "-c", expression + '; printf "%s" "$test_command"'], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def test_ci_runs_the_readme_test_command_which_installs_its_tools():
    command = _test_command()
    quick_start = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("## ", 1)[0]
    assert command and command in quick_start
    install, run = command.split(" && ")
    assert install == 'pip install -e ".[test]"' and run.startswith("python -m pytest")
    assert 'eval "$test_command"' in (REPO / ".ci" / "run").read_text()


def test_the_test_extra_holds_pytest():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extra = [line.split(">")[0].split("=")[0].strip() for line in config["options.extras_require"]["test"].split("\n")]
    assert "pytest" in extra
