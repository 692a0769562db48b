"""The release: one version number, and .ci/check_install.py refusing a broken sdist, wheel or
install (.ci/run runs it on the real ones)."""
import importlib.metadata
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import tinygpt

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / ".ci" / "check_install.py"
PYX = sorted((REPO / "csrc").glob("*.pyx"))


def test_the_version_is_written_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tinygpt.__version__"}
    assert importlib.metadata.version("tinygpt") == tinygpt.__version__


def fake_sdist(folder, leave_out=()):
    """An sdist of the repository's build inputs (less ``leave_out``) and a PKG-INFO."""
    path = folder / f"tinygpt-{tinygpt.__version__}.tar.gz"
    top = f"tinygpt-{tinygpt.__version__}"
    sources = [*PYX, *sorted((REPO / "csrc").glob("*.pxd")), *sorted((REPO / "csrc").glob("*.h"))]
    inputs = ["setup.py", "pyproject.toml", "README.md", "LICENSE",
              *(p.relative_to(REPO).as_posix() for p in sources)]
    with tarfile.open(path, "w:gz") as tar:
        pkg_info = f"Name: tinygpt\nVersion: {tinygpt.__version__}\n".encode()
        info = tarfile.TarInfo(f"{top}/PKG-INFO")
        info.size = len(pkg_info)
        tar.addfile(info, io.BytesIO(pkg_info))
        for name in inputs:
            if name not in leave_out:
                tar.add(REPO / name, arcname=f"{top}/{name}")
    return path


def fake_wheel(folder, leave_out=()):
    """A wheel with an (empty) compiled module per csrc/*.pyx and py.typed, less ``leave_out``."""
    path = folder / f"tinygpt-{tinygpt.__version__}-cp311-cp311-linux_x86_64.whl"
    names = [f"tinygpt/_{p.stem}.cpython-311-x86_64-linux-gnu.so" for p in PYX]
    with zipfile.ZipFile(path, "w") as wheel:
        for name in [*names, "tinygpt/py.typed"]:
            if name not in leave_out:
                wheel.writestr(name, b"")
    return path


def check_install(sdist, wheel, block=None):
    """Run the check, with the kernel module ``block`` made to fail its import."""
    argv = [str(CHECK), str(sdist), str(wheel)]
    prelude = f"sys.modules['tinygpt.{block}'] = None; " if block else ""
    code = (f"import runpy, sys; {prelude}sys.argv = {argv!r}; "
            f"runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize("sdist_lacks, wheel_lacks, block, message", [
    ("csrc/gelu.pyx", "", None, "lacks csrc/gelu.pyx"),
    ("csrc/kernel_checks.pxd", "", None, "lacks csrc/kernel_checks.pxd"),
    ("LICENSE", "", None, "lacks LICENSE"),
    ("", "tinygpt/_gelu.cpython-311-x86_64-linux-gnu.so", None, "lacks tinygpt/_gelu.*.so"),
    ("", "tinygpt/py.typed", None, "lacks tinygpt/py.typed"),
    ("", "", "_gelu", "missing compiled kernels:\nbackend 'cython'"),
    # the editable install under test lives in the repository, not in site-packages
    ("", "", None, "not from this venv's site-packages"),
])
def test_check_install_fails_naming_the_problem(tmp_path, sdist_lacks, wheel_lacks, block,
                                                message):
    done = check_install(fake_sdist(tmp_path, [sdist_lacks]),
                         fake_wheel(tmp_path, [wheel_lacks]), block)
    assert done.returncode != 0
    assert "check_install: FAILED" in done.stderr and message in done.stderr, done.stderr
    if block:
        assert f"tinygpt.{block} (gelu_forward, gelu_backward)" in done.stderr
