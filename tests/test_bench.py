"""bench/run.py: a smoke run end to end, whose JSON must hold every figure and satisfy the
relations between them; and its check that tinygpt and PyTorch compute the same first loss."""
import dataclasses
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinygpt
from tinygpt import TinyGPT, ops

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
# the benchmark's model and batch, written out here rather than read from bench/run.py
VOCAB, D_MODEL, N_HEADS, N_LAYERS, SEQ_LEN, BATCH = 65, 128, 4, 4, 128, 64


@pytest.fixture(scope="module")
def bench():
    """bench/run.py as a module (importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_settings():
    """bench functions set the backend and the threads: restore them afterwards."""
    backend, threads = ops.get_backend(), ops.get_num_threads()
    yield
    ops.set_backend(backend)
    ops.set_num_threads(threads)


def positive(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def same(a, b):
    """Two figures that are one formula apart: equal up to the rounding of that formula."""
    return math.isclose(a, b, rel_tol=1e-12)


def first_loss_of_the_benchmark_model(blocked_ops=()):
    """The default model's loss on the benchmark's batch, computed here, on the kernels the
    benchmark ran on (an op whose kernel it could not import runs on NumPy here too)."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, VOCAB, (BATCH, SEQ_LEN)), rng.integers(0, VOCAB, (BATCH, SEQ_LEN))
    model = TinyGPT(VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=N_LAYERS,
                    max_seq_len=SEQ_LEN)
    with pytest.MonkeyPatch.context() as patch:
        for op in blocked_ops:
            patch.delitem(ops._kernels, op)
        with ops.using_backend("auto"):
            return model.loss(x, y)


@pytest.mark.parametrize("blocked", [None, "_gelu"])
def test_bench_writes_every_figure(tmp_path, bench, blocked):
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

    # without PyTorch its comparisons are open; --smoke makes 20 tokens, not the goal's 500
    targets = report["targets"]
    assert targets["train_step.ratio_vs_torch"]["met"] is None
    assert targets["memory.peak_rss_mb"]["met"] is None
    assert targets["generate.cache_speedup"]["met"] is None
    assert "targets" in done.stdout

    assert_relations(report, done.stdout, bench)
    # the loss before the first step is the default model's on the benchmark's batch
    blocked_ops = set(ops._KERNEL_MODULES) - built
    assert report["train_step"]["first_loss"] == {
        "tinygpt": first_loss_of_the_benchmark_model(blocked_ops), "torch": None}


def assert_relations(report, stdout, bench):
    """What the figures must satisfy however noisy the machine: each derived figure is its
    formula of the measured ones, the counts follow the plan, and each goal's verdict follows
    its figure (in the JSON and in the printed table)."""
    plan, machine = report["plan"], report["machine"]
    assert report["mode"] == "smoke" and plan == dataclasses.asdict(bench.PLANS["smoke"])
    assert machine["threads"] == 2

    sgemm = report["sgemm"]
    assert same(sgemm["gflops"], 2 * sgemm["size"] ** 3 / (sgemm["ms"] / 1e3) / 1e9)
    peak = sgemm["gflops"]

    # kernels: each op at 1 and 2 threads; the headline figures are the 2-thread ones
    setup = report["kernel_setup"]
    assert setup["thread_counts"] == [1, 2] and setup["rounds"] == plan["kernel_rounds"]
    assert set(setup["arg_shapes"]) == set(report["kernels"])
    on_kernels = {op for op, where in machine["op_backends"].items() if where == "cython"}
    assert on_kernels <= set(report["kernels"])  # every compiled op is timed
    assert set(setup["missing"]) == set(machine["op_backends"]) - on_kernels
    for name, k in report["kernels"].items():
        one, two = k["threads"]["1"], k["threads"]["2"]
        assert k["kernel_ms"] == two["kernel_ms"] and k["numpy_ms"] == two["numpy_ms"], name
        assert same(k["speedup"], k["numpy_ms"] / k["kernel_ms"]), name
        assert same(k["scaling"], one["kernel_ms"] / two["kernel_ms"]), name
        assert same(k["numpy_scaling"], one["numpy_ms"] / two["numpy_ms"]), name

    # training step: the parameter count of the model, FLOPs from it, rates from the median
    t = report["train_step"]
    n_params = TinyGPT(VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=N_LAYERS,
                       max_seq_len=SEQ_LEN).num_parameters()
    assert (t["n_params"], t["batch_size"], t["seq_len"]) == (n_params, BATCH, SEQ_LEN)
    tokens = BATCH * SEQ_LEN
    assert t["flops_per_step"] == (6 * n_params + 12 * N_LAYERS * SEQ_LEN * D_MODEL) * tokens
    assert t["rounds"] == plan["train_rounds"]
    for name, prefix in (("tinygpt", ""), ("numpy", "numpy_")):
        rounds = t["rounds_ms"][name]
        assert len(rounds) == plan["train_rounds"]
        assert same(t[f"{name}_ms"], statistics.median(rounds))
        seconds = t[f"{name}_ms"] / 1e3
        assert same(t[prefix + "tokens_per_sec"], tokens / seconds)
        assert same(t[prefix + "gflops"], t["flops_per_step"] / seconds / 1e9)
        assert same(t[prefix + "mfu"], t[prefix + "gflops"] / peak)
    assert same(t["speedup_vs_numpy"], t["numpy_ms"] / t["tinygpt_ms"])

    g = report["generate"]
    assert g["new_tokens"] == plan["generate_tokens"] and g["rounds"] == plan["generate_rounds"]
    assert g["context_window"] >= g["prompt_tokens"] + g["new_tokens"]  # no cropping
    if g["cache_available"]:
        assert same(g["cache_speedup"], g["tokens_per_sec"] / g["no_cache_tokens_per_sec"])

    memory = report["memory"]
    assert memory["steps"] == plan["memory_steps"]
    assert memory["peak_rss_mb"] >= memory["import_rss_mb"]  # a high-water mark only rises

    # the goals: one per timed op (two with the scaling), and each verdict from its figure
    targets = report["targets"]
    timed = [name for name in report["kernels"] if name not in bench.ATTENTION]
    assert set(targets) == ({"train_step.ratio_vs_torch", "generate.cache_speedup",
                             "memory.peak_rss_mb"}
                            | {f"kernels.{name}.{figure}" for name in timed
                               for figure in ("speedup", "scaling")})
    for name in timed:
        goal = 5 if name == "attention" else 3
        for figure, bound in (("speedup", goal), ("scaling", 1.7)):
            target = targets[f"kernels.{name}.{figure}"]
            assert target["value"] == report["kernels"][name][figure]
            assert target["met"] == (target["value"] >= bound), (name, figure)
    printed = {line.split()[0]: line for line in stdout.split("targets (ratios from this run)")[1]
               .splitlines() if line.strip() and not line.startswith("total")}
    for name, target in targets.items():
        verdict = {True: " met", False: " NOT MET", None: " no figure"}[target["met"]]
        assert printed[name].endswith(verdict), printed[name]


# ---------------------------------------------------------------- the first-loss check

def test_first_losses_that_agree_pass_the_check(bench):
    assert bench.check_first_loss({"tinygpt": 4.1958474, "torch": 4.1958475}) < 1e-7
    assert bench.check_first_loss({"tinygpt": 4.1958474, "torch": None}) is None  # no PyTorch
    assert bench.FIRST_LOSS_RTOL == 1e-5


@pytest.mark.parametrize("torch_loss", [4.2 * (1 + 2e-5), 4.2 * (1 - 2e-5), float("nan")])
def test_first_losses_that_disagree_fail_the_check(bench, torch_loss):
    with pytest.raises(bench.BenchmarkError, match=r"disagree .* tinygpt 4\.2, pytorch"):
        bench.check_first_loss({"tinygpt": 4.2, "torch": torch_loss})


def test_a_first_loss_mismatch_fails_the_benchmark_before_the_timing(bench, keep_settings,
                                                                     monkeypatch, capsys):
    """main() exits 1 with the reason on stderr; the step's timing rounds never start."""
    def wrong_twin(threads, x, y, weights_from=None):
        return (lambda: None), weights_from.loss(x, y) * (1 + 1e-4)

    def no_timing(*args, **kwargs):
        raise AssertionError("the step was timed despite the mismatch")

    monkeypatch.setattr(bench, "torch_importable", lambda: True)
    monkeypatch.setattr(bench, "torch_setup", wrong_twin)
    monkeypatch.setattr(bench, "alternate", no_timing)
    monkeypatch.setattr(bench, "bench_sgemm", lambda plan: {"size": 1, "ms": 1.0, "gflops": 1.0})
    monkeypatch.setattr(bench, "bench_kernels", lambda plan, threads: ({}, {}))
    assert bench.main(["--smoke", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "bench: FAILED: tinygpt and PyTorch disagree" in err and "1e-05" in err


def test_pytorch_twin_agrees_on_the_first_loss(bench, keep_settings, monkeypatch):
    """The real check, where PyTorch is installed (the bench extra)."""
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # torch_model, as the script finds it
    ops.set_backend("auto")
    model, (x, y) = bench.default_model(), bench.batch()
    _, torch_loss = bench.torch_setup(1, x, y, model)
    first_loss = {"tinygpt": model.loss(x, y), "torch": torch_loss}
    assert bench.check_first_loss(first_loss) <= bench.FIRST_LOSS_RTOL
