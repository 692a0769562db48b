"""bench/run.py: a smoke run end to end, whose JSON must hold every figure and satisfy the
relations between them; and its check that tinygpt and PyTorch compute the same first loss."""
import dataclasses
import importlib.util
import json
import math
import os
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
STEP_KEYS = ("tinygpt_ms", "tokens_per_sec", "gflops", "mfu", "best_mfu", "flops_per_step",
             "peak_gflops")
POSITIVE = {
    "sgemm": ("median_gflops", "min_gflops", "max_gflops"),
    "train_step": STEP_KEYS + ("numpy_ms", "speedup_vs_numpy", "numpy_tokens_per_sec"),
    "train_step_large": STEP_KEYS,
    "generate": ("no_cache_tokens_per_sec",),
    "memory": ("peak_rss_mb", "import_rss_mb"),
}
TORCH_KEYS = ("torch_ms", "ratio_vs_torch", "torch_tokens_per_sec", "torch_gflops", "torch_mfu")
ABSENT = {  # None in a run with --no-torch; the large model has no NumPy-backend contender
    "train_step": TORCH_KEYS,
    "train_step_large": TORCH_KEYS + ("numpy_ms", "speedup_vs_numpy", "numpy_tokens_per_sec",
                                      "numpy_gflops", "numpy_mfu"),
    "memory": ("torch_peak_rss_mb", "torch_import_rss_mb"),
}
# the benchmark's models and batches, written out here rather than read from bench/run.py:
# (d_model, n_heads, n_layers, seq_len, batch)
VOCAB = 65
SHAPES = {"train_step": (128, 4, 4, 128, 64), "train_step_large": (384, 6, 6, 256, 16)}
D_MODEL, N_HEADS, N_LAYERS, SEQ_LEN, BATCH = SHAPES["train_step"]
SGEMM_FLOPS = 2 * 2048 ** 3
LINEAR = ("linear_forward", "linear_backward")


@pytest.fixture(scope="module")
def bench():
    """bench/run.py as a module (importing it runs nothing; bench/ holds what it imports)."""
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "bench"))
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
                   f"sys.path.insert(0, 'bench'); "
                   f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')"]
        built -= {op for op, module in ops._KERNEL_MODULES.items() if module == blocked}
    # a core type in the environment is dropped before NumPy loads OpenBLAS (bench/blas_env.py)
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "training step" in done.stdout
    report = json.loads(path.read_text())

    for section, keys in POSITIVE.items():
        for key in keys:
            assert positive(report[section][key]), (section, key, report[section][key])
    for section, keys in ABSENT.items():
        for key in keys:
            assert report[section][key] is None, (section, key)

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
    assert set(machine["cpu_features"]) == {"avx512f", "avx2", "fma3"}
    assert set(machine["cpu_features"].values()) <= {True, False, None}
    assert f"({bench.simd(machine['cpu_features'])})" in done.stdout.splitlines()[1]
    for blas in machine["blas"]:
        assert blas["from"] and "architecture" in blas  # the BLAS kernel, as threadpoolctl says
    assert machine["openblas_coretype_dropped"] == "Haswell"
    assert "OPENBLAS_CORETYPE=Haswell from the environment dropped" in done.stdout
    assert machine["torch_used"] is False
    assert machine["op_backends"] == {op: "cython" if op in built else "numpy"
                                      for op in ops._KERNEL_MODULES}
    assert f"backend: {machine['backend']}" in done.stdout
    for name in set(ops._KERNEL_MODULES) - built:
        assert name in machine["backend"]
        assert f"{name:<22}   numpy no compiled kernel" in done.stdout

    # without PyTorch its comparisons are open; --smoke makes 20 tokens, not the goal's 500
    targets = report["targets"]
    for name in ("train_step.ratio_vs_torch", "memory.peak_rss_mb", "generate.tokens_per_sec",
                 "generate.cache_speedup"):
        assert targets[name]["met"] is None, name
    for name in ("train_step.mfu", "train_step_large.mfu"):
        assert isinstance(targets[name]["met"], bool), name

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

    # the linear kernels, in turns with the sgemm peak at the model's own shapes
    sgemm_rounds, linear = [], [name for name in LINEAR if name in report["kernels"]]
    for name in linear:
        k, shapes = report["kernels"][name], setup["arg_shapes"][name]
        (n, inner), (rows, m) = shapes[:2] if name == "linear_forward" else shapes[1:3]
        assert n == BATCH * SEQ_LEN and rows == inner, (name, shapes)
        assert k["flops"] == (2 if name == "linear_forward" else 4) * n * inner * m
        assert_turns(k, {"kernel", "sgemm"}, plan["kernel_rounds"])
        assert same(k["kernel_ms"], statistics.median(k["rounds_ms"]["kernel"]))
        assert same(k["gflops"], k["flops"] / (k["kernel_ms"] / 1e3) / 1e9)
        assert same(k["peak_share"], k["gflops"] / k["peak_gflops"])
        sgemm_rounds += k["rounds_ms"]["sgemm"]

    # training steps: the parameter count of the model, FLOPs from it, rates from the medians
    for section, contenders in (("train_step", ["tinygpt", "numpy", "sgemm"]),
                                ("train_step_large", ["tinygpt", "sgemm"])):
        t, (d, heads, layers, seq_len, batch) = report[section], SHAPES[section]
        n_params = TinyGPT(VOCAB, d_model=d, n_heads=heads, n_layers=layers,
                           max_seq_len=seq_len).num_parameters()
        assert (t["n_params"], t["d_model"], t["n_heads"], t["n_layers"], t["seq_len"],
                t["batch_size"]) == (n_params, d, heads, layers, seq_len, batch)
        tokens = batch * seq_len
        assert t["flops_per_step"] == (6 * n_params + 12 * layers * seq_len * d) * tokens
        rounds = plan["train_rounds" if section == "train_step" else "large_rounds"]
        assert t["rounds"] == rounds and t["warmup_rounds"] == plan["warmup_rounds"]
        assert t["contenders"] == contenders  # the peak between NumPy's BLAS and PyTorch
        assert_turns(t, set(contenders), rounds)
        for name, prefix in (("tinygpt", ""), ("numpy", "numpy_")):
            if name not in contenders:
                continue
            assert same(t[f"{name}_ms"], statistics.median(t["rounds_ms"][name]))
            seconds = t[f"{name}_ms"] / 1e3
            assert same(t[prefix + "tokens_per_sec"], tokens / seconds)
            assert same(t[prefix + "gflops"], t["flops_per_step"] / seconds / 1e9)
            assert same(t[prefix + "mfu"], t[prefix + "gflops"] / t["peak_gflops"])
        best_peak = SGEMM_FLOPS / (min(t["rounds_ms"]["sgemm"]) / 1e3) / 1e9
        assert same(t["best_mfu"],
                    t["flops_per_step"] / (min(t["rounds_ms"]["tinygpt"]) / 1e3) / 1e9 / best_peak)
        sgemm_rounds += t["rounds_ms"]["sgemm"]
    t = report["train_step"]
    assert same(t["speedup_vs_numpy"], t["numpy_ms"] / t["tinygpt_ms"])

    # the header's sgemm line sums up every round of the peak that the sections took
    sgemm = report["sgemm"]
    assert sgemm["size"] == 2048 and sgemm["rounds"] == len(sgemm_rounds)
    assert sgemm["rounds"] == (len(linear) * plan["kernel_rounds"] + plan["train_rounds"]
                               + plan["large_rounds"])
    assert same(sgemm["median_gflops"], SGEMM_FLOPS / statistics.median(sgemm_rounds) * 1e3 / 1e9)
    assert same(sgemm["min_gflops"], SGEMM_FLOPS / max(sgemm_rounds) * 1e3 / 1e9)
    assert same(sgemm["max_gflops"], SGEMM_FLOPS / min(sgemm_rounds) * 1e3 / 1e9)

    g = report["generate"]
    assert g["new_tokens"] == plan["generate_tokens"] and g["rounds"] == plan["generate_rounds"]
    assert g["context_window"] >= g["prompt_tokens"] + g["new_tokens"]  # no cropping
    if g["cache_available"]:
        assert same(g["cache_speedup"], g["tokens_per_sec"] / g["no_cache_tokens_per_sec"])

    memory = report["memory"]
    assert memory["steps"] == plan["memory_steps"]
    assert memory["peak_rss_mb"] >= memory["import_rss_mb"]  # a high-water mark only rises
    assert_targets(report, stdout, bench)


def assert_turns(figures, sides, rounds):
    """A measurement in turns: every side's rounds, its spread, and the peak from the sgemm's
    median."""
    assert set(figures["rounds_ms"]) == set(figures["spread"]) == sides
    for side, ms in figures["rounds_ms"].items():
        assert len(ms) == rounds, side
        assert same(figures["spread"][side], (max(ms) - min(ms)) / statistics.median(ms)), side
    peak = SGEMM_FLOPS / (statistics.median(figures["rounds_ms"]["sgemm"]) / 1e3) / 1e9
    assert same(figures["peak_gflops"], peak)


def assert_targets(report, stdout, bench):
    """One goal per figure that issue #13 names, each with its bound, and a verdict that
    follows from figure and bound."""
    targets, kernels = report["targets"], report["kernels"]
    g, memory = report["generate"], report["memory"]
    at_500 = g["new_tokens"] >= 500
    expected = {
        "train_step.mfu": (report["train_step"]["mfu"], ">=", 0.80),
        "train_step.ratio_vs_torch": (report["train_step"]["ratio_vs_torch"], "<=", 0.55),
        "train_step_large.mfu": (report["train_step_large"]["mfu"], ">=", 0.75),
        "generate.tokens_per_sec": (g["tokens_per_sec"] if at_500 else None, ">=", 3000),
        "generate.cache_speedup": (g["cache_speedup"] if at_500 else None, ">=", 10),
        "memory.peak_rss_mb": (memory["peak_rss_mb"], "<", memory["torch_peak_rss_mb"]),
    }
    for name, k in kernels.items():
        if name in bench.ATTENTION:
            continue
        if name in LINEAR:  # held to the sgemm peak, not to 3x a twin that runs BLAS too
            expected[f"kernels.{name}.peak_share"] = (k["peak_share"], ">=", 0.80)
        else:
            expected[f"kernels.{name}.speedup"] = (k["speedup"], ">=",
                                                   10 if name == "attention" else 3)
        expected[f"kernels.{name}.scaling"] = (k["scaling"], ">=", 1.7)
    assert set(targets) == set(expected)
    compare = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    for name, (value, op, bound) in expected.items():
        t = targets[name]
        assert (t["value"], t["op"], t["bound"]) == (value, op, bound), name
        assert t["met"] == (None if value is None or bound is None
                            else compare[op](value, bound)), name

    printed = {line.split()[0]: line
               for line in stdout.split("targets (each against this run's own figures)")[1]
               .splitlines() if line.strip() and not line.startswith("total")}
    assert set(printed) == set(targets)
    for name, target in targets.items():
        verdict = {True: " met", False: " NOT MET", None: " not measured"}[target["met"]]
        assert printed[name].endswith(verdict), printed[name]


def test_a_figure_just_short_of_its_bound_prints_with_the_digits_that_show_it(bench):
    assert bench.target_digits(0.84, 0.80) == 2
    assert bench.target_digits(0.797, 0.80) == 3  # not "0.80 >= 0.80 ... NOT MET"
    assert bench.target_digits(0.7997, 0.80) == 4
    assert bench.target_digits(0.80, 0.80) == 2  # equal: nothing to tell apart
    assert bench.target_digits(None, 0.80) == 2


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
    def wrong_twin(threads, shape, x, y, weights_from=None):
        return (lambda: None), weights_from.loss(x, y) * (1 + 1e-4)

    def no_timing(*args, **kwargs):
        raise AssertionError("the step was timed despite the mismatch")

    monkeypatch.setattr(bench, "torch_importable", lambda: True)
    monkeypatch.setattr(bench, "torch_setup", wrong_twin)
    monkeypatch.setattr(bench, "alternate", no_timing)
    monkeypatch.setattr(bench, "bench_kernels", lambda plan, threads: ({}, {}))
    assert bench.main(["--smoke", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "bench: FAILED: tinygpt and PyTorch disagree" in err and "1e-05" in err


@pytest.mark.parametrize("shape", ["SMALL", "LARGE"])
def test_pytorch_twin_agrees_on_the_first_loss(bench, keep_settings, monkeypatch, shape):
    """The real check, where PyTorch is installed (the bench extra), for both timed models."""
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # torch_model, as the script finds it
    ops.set_backend("auto")
    shape = getattr(bench, shape)
    model, (x, y) = bench.make_model(shape), bench.batch(shape)
    _, torch_loss = bench.torch_setup(1, shape, x, y, model)
    first_loss = {"tinygpt": model.loss(x, y), "torch": torch_loss}
    assert bench.check_first_loss(first_loss) <= bench.FIRST_LOSS_RTOL


def test_ab_step_times_two_trees_in_turns():
    """bench/ab_step.py: this tree against itself, a step (and each op) timed per pair."""
    command = [sys.executable, str(REPO / "bench" / "ab_step.py"), str(REPO), str(REPO),
               "--pairs", "2", "--threads", "1", "--ops"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {" ".join(line.split()[:-8]): line.split() for line in done.stdout.splitlines()[2:]}
    assert {"step", "linear_forward", "linear_forward + gelu", "attention_forward"} <= set(rows)
    for name, row in rows.items():
        a_median, b_median, a_best, b_best = map(float, row[-8:-4])
        assert a_best <= a_median and b_best <= b_median, name
        assert row[-3:] == [row[-3], "of", "2"] and 0 <= int(row[-3]) <= 2, name
    assert float(rows["step"][-8]) > float(rows["linear_forward"][-8]) > 0


def test_ab_step_large_runs_the_larger_model():
    command = [sys.executable, str(REPO / "bench" / "ab_step.py"), str(REPO), str(REPO),
               "--pairs", "1", "--large"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    header, _, step = done.stdout.splitlines()[:3]
    d_model, n_heads, n_layers, seq_len, _ = SHAPES["train_step_large"]
    n_params = TinyGPT(VOCAB, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                       max_seq_len=seq_len).num_parameters()
    assert f"larger model ({n_params:,} parameters)" in header
    assert step.split()[0] == "step" and float(step.split()[1]) > 0


def test_ab_step_wants_two_trees(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "ab_step.py"), str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "two source trees" in done.stderr
