"""Write tests/fixtures/torch_oracle.npz: PyTorch's float64 answer for a small tinygpt model.

    python bench/make_torch_oracle.py            # (re)write the fixture
    python bench/make_torch_oracle.py --check    # recompute and compare; write nothing

The model is bench/torch_model.TorchGPT in float64 with fixed weights, drawn here from a seeded
NumPy generator (not from tinygpt's init, so the fixture does not move when that does) and
stored in the fixture in tinygpt's names and layouts (linear weights (in, out), head_w (C, V)).
For each case of token ids and targets (some targets -1, ignored) torch autograd gives the
logits (B, T, V), the mean cross-entropy and every parameter's gradient, mapped back to
tinygpt's names and layouts. Dropout is off (TorchGPT has none). tests/test_oracle.py compares
tinygpt with it on both backends using NumPy alone.

The cases cover T = 1 (B = 1 and B = 3), a middle T = 23 and T = 67 with B = 4: 268 rows, more
than the linear kernel's 256-row block, and T not a multiple of the attention kernel's 6-row
micro-blocks, its 16-column score padding or the former 64-row bands.

Deterministic: PyTorch runs on one thread with deterministic algorithms, and the archive is
written with fixed timestamps, so a re-run with the same PyTorch gives the same bytes.
"""
import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "torch_oracle.npz"
SEED = 20240611
# d_model 16 with 4 heads: head size D = 4, so the attention kernel's outputs (D columns) go
# through its gemm's column tail, while the scores (whole 16-column blocks) go through the
# vector path; 2 layers, so gradients cross a block boundary.
CONFIG = dict(vocab_size=11, d_model=16, n_heads=4, n_layers=2, max_seq_len=70)
CASES = (  # name, B, T
    ("t1_b1", 1, 1),
    ("t1_b3", 3, 1),
    ("t23_b2", 2, 23),
    ("t67_b4", 4, 67),
)
WEIGHT_BITS = 12  # weights are multiples of 2**-12: exact in float32 too, and they compress


def _fail(message):
    print(f"make_torch_oracle.py: {message}", file=sys.stderr)
    sys.exit(1)


try:
    import torch
except ImportError as error:  # say so plainly: the fixture cannot be made without PyTorch
    _fail(f"PyTorch is not installed ({error}); install it (pip install torch) to regenerate "
          f"{FIXTURE.relative_to(ROOT)}. The tests need only the checked-in fixture.")

sys.path.insert(0, str(ROOT / "bench"))
import torch_model  # noqa: E402  (bench/ is not a package)


def draw_weights(pairs, rng):
    """tinygpt name -> weights in tinygpt's layout: LayerNorm gains near 1, biases near 0 (not
    exactly, so every gradient path carries signal), matrices N(0, 1 / fan_in)."""
    weights = {}
    for name, param, transposed in pairs:
        shape = tuple(reversed(param.shape)) if transposed else tuple(param.shape)
        kind = name.split(".")[-1]
        if kind in ("ln1_w", "ln2_w", "lnf_w"):
            w = 1.0 + rng.normal(0.0, 0.2, shape)
        elif kind.endswith("_b"):
            w = rng.normal(0.0, 0.1, shape)
        elif kind in ("wte", "wpe"):
            w = rng.normal(0.0, 0.5, shape)
        else:  # (in, out) matrices
            w = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        weights[name] = np.ldexp(np.round(np.ldexp(w, WEIGHT_BITS)), -WEIGHT_BITS)
    return weights


def draw_case(rng, B, T, V, name):
    """ids and targets (B, T) int64; about one target in seven is -1 (ignored)."""
    high = V - 1 if name == "t23_b2" else V  # one case leaves a token out: a zero row of wte
    ids = rng.integers(0, high, (B, T), dtype=np.int64)
    targets = rng.integers(0, V, (B, T), dtype=np.int64)
    targets[rng.random((B, T)) < 1 / 7] = -1
    if B * T > 1:
        targets.reshape(-1)[1] = -1  # at least one ignored
    targets.reshape(-1)[0] = ids.reshape(-1)[0] % V  # at least one kept
    return ids, targets


def compute():
    """The fixture's arrays, in a fixed order."""
    torch.manual_seed(0)  # TorchGPT's own init, overwritten below
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model = torch_model.TorchGPT(**CONFIG).double()
    pairs = torch_model.tinygpt_parameters(model)
    if len(pairs) != len(list(model.parameters())):
        _fail("tinygpt_parameters does not name every parameter of TorchGPT")
    rng = np.random.default_rng(SEED)
    weights = draw_weights(pairs, rng)
    torch_model.load_tinygpt_weights(model, SimpleNamespace(p=weights))
    for name, param, transposed in pairs:  # the load is exact
        loaded = param.detach().numpy()
        assert np.array_equal(loaded.T if transposed else loaded, weights[name]), name

    arrays = {
        "config": np.array(json.dumps(CONFIG, sort_keys=True)),
        "torch_version": np.array(torch.__version__),
        "numpy_version": np.array(np.__version__),
        "case_names": np.array([name for name, _, _ in CASES]),
    }
    arrays.update({f"weights/{name}": w for name, w in weights.items()})
    V = CONFIG["vocab_size"]
    for case, B, T in CASES:
        ids, targets = draw_case(rng, B, T, V, case)
        model.zero_grad(set_to_none=True)
        loss = model(torch.from_numpy(ids), torch.from_numpy(targets))  # TorchGPT's own loss
        loss.backward()
        with torch.no_grad():
            logits = model.logits(torch.from_numpy(ids))
        arrays[f"{case}/ids"] = ids
        arrays[f"{case}/targets"] = targets
        arrays[f"{case}/logits"] = logits.numpy().copy()
        arrays[f"{case}/loss"] = np.array(loss.item(), dtype=np.float64)
        for name, param, transposed in pairs:
            grad = param.grad.numpy()
            arrays[f"{case}/grad/{name}"] = np.ascontiguousarray(grad.T if transposed else grad)
    for key, a in arrays.items():
        if a.dtype.kind == "f" and a.dtype != np.float64:
            _fail(f"{key} is {a.dtype}, not float64")
    return arrays


def save_npz(path, arrays):
    """What np.savez_compressed writes (a deflated zip of .npy files, no pickles), but with a
    fixed timestamp on every member, so equal arrays give equal bytes."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, a in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def check(arrays):
    """Compare freshly computed arrays with the fixture's; returns the keys that differ."""
    with np.load(FIXTURE, allow_pickle=False) as stored:
        keys = set(stored.files) | set(arrays)
        return sorted(k for k in keys if k not in stored.files or k not in arrays
                      or not np.array_equal(stored[k], arrays[k]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the checked-in fixture instead of writing it")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    arrays = compute()
    for case, B, T in CASES:
        print(f"  {case}: B={B} T={T} loss={float(arrays[f'{case}/loss']):.17g}")
    if args.check:
        differ = check(arrays)
        if differ:
            print(f"{len(differ)} arrays differ from {FIXTURE.relative_to(ROOT)}: "
                  f"{', '.join(differ[:8])}{' ...' if len(differ) > 8 else ''}")
            return 1
        print(f"{FIXTURE.relative_to(ROOT)}: all {len(arrays)} arrays identical")
        return 0
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    save_npz(FIXTURE, arrays)
    print(f"wrote {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size / 1024:.0f} KiB, "
          f"{len(arrays)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
