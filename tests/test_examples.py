"""Every script in md_examples/ runs in its shortened (--quick) form.

Each needs a shipped potential from potentials/; while that file is missing the test is
skipped with the reason. The scripts are run in-process (their ``main(argv)``) to save the
interpreter and torch start-up time.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "md_examples")
POTENTIALS = os.path.join(ROOT, "potentials")

# script -> (potential it needs, arguments of the shortened run)
CASES = {
    "nve_ethanol.py": ("ethanol_sgdml.mlff", ["--steps", "40"]),
    "nvt_ethanol.py": ("ethanol_sgdml.mlff", ["--quick"]),
    "npt_ni.py": ("ni_mff.mlff", ["--quick"]),
    "relax_ni.py": ("ni_mff.mlff", ["--quick"]),
    "phonons_ni.py": ("ni_mff.mlff", ["--quick"]),
    "eos_ni.py": ("ni_mff.mlff", ["--quick"]),
    "nvt_water.py": ("water_bpnn.mlff", ["--quick"]),
}


def _load(script):
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", os.path.join(EXAMPLES, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_covered():
    scripts = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_"))
    assert scripts == sorted(CASES)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_quick(script, tmp_path, capsys):
    potential, args = CASES[script]
    if not os.path.exists(os.path.join(POTENTIALS, potential)):
        pytest.skip(f"{script} needs potentials/{potential}, which is not there yet")
    module = _load(script)
    extra = [] if script in ("nve_ethanol.py", "nvt_water.py") else ["--outdir", str(tmp_path / "out")]
    if script in ("nvt_ethanol.py", "npt_ni.py", "phonons_ni.py", "eos_ni.py"):
        extra += ["--plots", str(tmp_path / "img")]
    assert module.main(args + extra) == 0
    out = capsys.readouterr().out
    assert out.strip()
    for png in (tmp_path / "img").glob("*.png") if (tmp_path / "img").exists() else []:
        assert png.stat().st_size < 200_000


@pytest.mark.parametrize("script", sorted(s for s in CASES if s != "nve_ethanol.py"))
def test_example_without_its_potential_says_so(script, tmp_path, capsys):
    module = _load(script)
    assert module.main(["--quick", "--model", str(tmp_path / "missing.mlff")]) == 2
    assert "needs" in capsys.readouterr().err
