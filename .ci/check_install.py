"""Check a release: the sdist holds every build input, the wheel every kernel, and the wheel,
once installed, imports with every op on its compiled kernel and trains.

    python .ci/check_install.py SDIST WHEEL

Run it with the python of a fresh venv that has only the wheel installed, from outside the
repository. Prints the kernels in use, the CPU and the median time of a training step of the
4-layer default model; exits non-zero, saying what is wrong, at the first problem.
"""
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md", "LICENSE")
STEPS = 5  # timed, after one untimed step


def fail(message):
    sys.exit(f"check_install: FAILED: {message}")


def check_sdist(sdist):
    """Every build input is in the sdist; returns the version in its PKG-INFO."""
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        files = {name.removeprefix(f"{top}/") for name in tar.getnames()}
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    sources = [p for pattern in ("*.pyx", "*.pxd", "*.h") for p in (REPO / "csrc").glob(pattern)]
    needed = {*BUILD_INPUTS, *(p.relative_to(REPO).as_posix() for p in sources)}
    missing = sorted(needed - files)
    if missing:
        fail(f"the sdist {Path(sdist).name} lacks {', '.join(missing)} (see MANIFEST.in)")
    return next(line.split(":", 1)[1].strip() for line in pkg_info.splitlines()
                if line.startswith("Version:"))


def check_wheel(wheel):
    """The wheel holds a compiled module for every csrc/*.pyx, and py.typed."""
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
    missing = [f"tinygpt/_{pyx.stem}.*.so" for pyx in sorted((REPO / "csrc").glob("*.pyx"))
               if not any(name.startswith(f"tinygpt/_{pyx.stem}.") and name.endswith(".so")
                          for name in files)]
    if "tinygpt/py.typed" not in files:
        missing.append("tinygpt/py.typed")
    if missing:
        fail(f"the wheel {Path(wheel).name} lacks {', '.join(missing)}")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_training_steps(tinygpt):
    """Median ms of a training step (loss, backward, AdamW) of the 4-layer model, batch 64 x 128;
    also the losses, first and last."""
    import numpy as np
    from tinygpt.optim import AdamW

    model = tinygpt.TinyGPT(65, d_model=128, n_heads=4, n_layers=4, max_seq_len=128)
    optimizer = AdamW(model.params, model.grads, model.decay_mask())
    x, y = np.random.default_rng(0).integers(0, 65, (2, 64, 128))
    seconds, losses = [], []
    for _ in range(STEPS + 1):
        start = time.perf_counter()
        losses.append(model.loss(x, y))
        model.backward()
        optimizer.step(1e-3)
        seconds.append(time.perf_counter() - start)
    if not all(math.isfinite(loss) for loss in losses) or losses[-1] >= losses[0]:
        fail(f"training on one batch did not lower the loss: {losses}")
    return 1e3 * statistics.median(seconds[1:]), losses[0], losses[-1]


def main(sdist, wheel):
    version = check_sdist(sdist)
    check_wheel(wheel)

    import tinygpt
    try:
        tinygpt.set_backend("cython")
    except RuntimeError as error:
        fail(f"the installed wheel is missing compiled kernels:\n{error}")
    location = Path(tinygpt.__file__).resolve().parent
    site = {Path(sysconfig.get_path(key)).resolve() for key in ("purelib", "platlib")}
    if location.parent not in site:
        fail(f"tinygpt was imported from {location}, not from this venv's site-packages: "
             f"run the check outside the repository, with the wheel installed")
    installed = importlib.metadata.version("tinygpt")
    if not installed == tinygpt.__version__ == version:
        fail(f"versions differ: sdist {version}, installed metadata {installed}, "
             f"tinygpt.__version__ {tinygpt.__version__}")

    ms, first, last = time_training_steps(tinygpt)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"tinygpt {installed} installed from {Path(wheel).name} at {location}")
    print(f"kernels: {tinygpt.backend_summary()}: {', '.join(tinygpt.available_kernels())}")
    print(f"CPU: {cpu_model()}, {affinity} CPUs available, {tinygpt.get_num_threads()} threads")
    print(f"training step (4 layers, d_model 128, batch 64 x 128, AdamW): median "
          f"{ms:.1f} ms over {STEPS} steps; loss {first:.3f} -> {last:.3f}")
    print("check_install: OK")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
