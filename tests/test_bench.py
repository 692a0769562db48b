"""Smoke test of bench/run.py: it runs end to end and writes every figure to its JSON file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tinygpt
from tinygpt import ops

REPO = Path(__file__).resolve().parent.parent
KERNEL_KEYS = ("kernel_ms", "numpy_ms", "speedup", "scaling", "numpy_scaling")
POSITIVE = {
    "sgemm": ("ms", "gflops"),
    "train_step": ("tinygpt_ms", "numpy_ms", "tokens_per_sec", "gflops", "mfu", "flops_per_step",
                   "speedup_vs_numpy", "numpy_tokens_per_sec"),
    "generate": ("no_cache_tokens_per_sec",),
    "memory": ("peak_rss_mb", "import_rss_mb"),
}
TORCH_ONLY = {
    "train_step": ("torch_ms", "ratio_vs_torch", "torch_tokens_per_sec", "torch_mfu"),
    "memory": ("torch_peak_rss_mb", "torch_import_rss_mb"),
}


def positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.parametrize("blocked", [None, "_gelu"])
def test_bench_writes_every_figure(tmp_path, blocked):
    """The benchmark with every kernel, and with one whose import fails (blocked)."""
    path = tmp_path / "bench.json"
    argv = [str(REPO / "bench" / "run.py"), "--smoke", "--no-torch", "--threads", "2",
            "--json", str(path)]
    command = [sys.executable, *argv]
    built = set(tinygpt.available_kernels())
    if blocked:
        command = [sys.executable, "-c",
                   f"import runpy, sys; sys.modules['tinygpt.{blocked}'] = None; "
                   f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"]
        built -= {op for op, module in ops._KERNEL_MODULES.items() if module == blocked}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "training step" in done.stdout
    report = json.loads(path.read_text())

    for section, keys in POSITIVE.items():
        for key in keys:
            assert positive(report[section][key]), (section, key, report[section][key])
    for section, keys in TORCH_ONLY.items():
        for key in keys:
            assert report[section][key] is None, (section, key)  # --no-torch

    expected = built | ({"attention"} if {"attention_forward", "attention_backward"} <= built
                        else set())
    assert set(report["kernels"]) == expected
    assert set(report["kernel_setup"]["missing"]).isdisjoint(built)
    for name, figures in report["kernels"].items():
        for key in KERNEL_KEYS:
            assert positive(figures[key]), (name, key, figures[key])
        for n in ("1", "2"):
            assert positive(figures["threads"][n]["kernel_ms"]), (name, n)
            assert positive(figures["threads"][n]["numpy_ms"]), (name, n)

    generate = report["generate"]
    if generate["cache_available"]:
        assert positive(generate["tokens_per_sec"]) and positive(generate["cache_speedup"])
    else:
        assert generate["tokens_per_sec"] is None

    machine = report["machine"]
    assert machine["cpu"] and positive(machine["cores"]) and machine["numpy"]
    assert machine["torch_used"] is False
    assert machine["op_backends"] == {op: "cython" if op in built else "numpy"
                                      for op in ops._KERNEL_MODULES}
    assert f"backend: {machine['backend']}" in done.stdout
    for name in set(ops._KERNEL_MODULES) - built:
        assert name in machine["backend"]
        assert f"{name:<22}   numpy no compiled kernel" in done.stdout

    # the goals, judged from the run's own figures; without PyTorch its comparisons are open
    targets = report["targets"]
    assert targets["train_step.ratio_vs_torch"]["met"] is None
    assert targets["memory.peak_rss_mb"]["met"] is None
    assert targets["generate.cache_speedup"]["met"] is None  # --smoke makes 20 tokens, not 500
    for name in report["kernels"]:
        if name not in ("attention_forward", "attention_backward"):
            speedup = targets[f"kernels.{name}.speedup"]
            assert speedup["value"] == report["kernels"][name]["speedup"]
            assert speedup["met"] == (speedup["value"] >= (5 if name == "attention" else 3))
    assert "targets" in done.stdout
