"""The README's two commands stay true: .ci/run runs the README's test command verbatim,
and the main job's script exists."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    return re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", text)


def test_readme_has_exactly_two_setup_commands():
    cmds = _commands()
    assert len(cmds) == 2, cmds
    assert "pytest" in cmds[1] and "md_examples/" in cmds[0]


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert _commands()[1] in ci


def test_main_job_script_exists():
    script = re.search(r"python (md_examples/\S+\.py)", _commands()[0]).group(1)
    assert os.path.exists(os.path.join(ROOT, script))
