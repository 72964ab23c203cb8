"""As a user installs and runs it: the source distribution holds every source the build needs and
installs, and the command-line job prints only its own output."""
import os
import subprocess
import sys
import tarfile

import pytest

from mnv2_fused import __main__ as cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked_files(under: str) -> list:
    try:
        out = subprocess.run(["git", "ls-files", under], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return out.stdout.split()


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ROOT],
                   check=True, capture_output=True, text=True)
    (path,) = out.glob("mnv2_fused-*.tar.gz")
    return path


def test_sdist_holds_every_tracked_source(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = set(tracked_files("csrc")) | {"LICENSE", "setup.py", "pyproject.toml", "README.md"}
    assert expected - names == set()


def test_sdist_installs_and_runs(sdist, tmp_path):
    """A C++-only build from the sdist, installed into a folder of its own, runs a fused block."""
    target = tmp_path / "site"
    env = {**os.environ, "MNV2_FUSED_BUILD_CUDA": "0"}
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
                            "--target", str(target), str(sdist)], env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    code = ("import torch, mnv2_fused; from mnv2_fused.bench.models import make_block; "
            "assert mnv2_fused.__file__.startswith(%r); b = make_block(16, 24, 2, 6); "
            "f = mnv2_fused.FusedInvertedResidual.from_block(b, backend='cpu').eval(); x = torch.randn(2, 16, 9, 9); "
            "torch.set_grad_enabled(False); print(float((f(x) - b(x)).abs().max()))") % str(target)
    run = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(target)}, cwd=str(tmp_path),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout) < 1e-4


def test_help_names_the_command(capsys, monkeypatch):
    for argv0, name in (("/usr/bin/mnv2-fused", "mnv2-fused"), ("-m", "python -m mnv2_fused")):
        monkeypatch.setattr(sys, "argv", [argv0, "--help"])
        with pytest.raises(SystemExit):
            cli.parse_args()
        assert capsys.readouterr().out.startswith(f"usage: {name} ")


def test_missing_matplotlib_is_reported_before_any_work(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--plot", "chart.png"])
    assert e.value.code == 2
    assert "matplotlib (for --plot)" in capsys.readouterr().err


def test_main_job_prints_only_its_own_output():
    run = subprocess.run([sys.executable, "-m", "mnv2_fused", "--resolution", "32", "--repeat", "2", "--no-onnx"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert all(line.startswith("[") for line in run.stderr.splitlines()), run.stderr  # progress lines only
    assert "relative error" in run.stdout and "mnv2_fused" in run.stdout


def test_missing_onnxruntime_shows_in_the_table(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli.main(["--resolution", "32", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "not run: onnxruntime is not installed" in out
