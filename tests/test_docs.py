"""The documentation's code runs: every docstring example in the tinygpt package (doctest), and
README.md's Python quick start, as a reader would paste it."""
import contextlib
import doctest
import importlib
import io
import pkgutil
import re
from pathlib import Path

import pytest

import tinygpt

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted(info.name for info in pkgutil.iter_modules(tinygpt.__path__, "tinygpt.")
                 if not info.name.startswith("tinygpt._"))  # compiled kernels have no examples


@pytest.mark.parametrize("name", ["tinygpt", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_docstring_examples_are_found():
    """The examples the package is known to carry are collected (a collector that finds no
    module, or no docstring, would pass every test above)."""
    finder = doctest.DocTestFinder()
    found = {name: sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
             for name in MODULES}
    for name in ("tinygpt.model", "tinygpt.tokenizer", "tinygpt.textgen"):
        assert found[name] >= 2, (name, found[name])


def readme_python():
    """The ```python block of the README's "From Python" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) == 1, blocks
    return blocks[0]


def test_readme_python_quick_start_runs(tmp_path, monkeypatch, shakespeare_path):
    """Pasted into a fresh directory, with the data where the README says it is looked for."""
    code = readme_python()
    assert "load_dataset()" in code and "tinygpt.load(" in code and "train_model(" in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGPT_DATA", str(shakespeare_path))
    stdout = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, "README.md", "exec"), namespace)
    history = namespace["history"]
    assert history["step"][-1] == 20 and history["eval_step"] == [10, 20]
    assert (tmp_path / "model.npz").is_file()  # it saved what it then loads
    lines = stdout.getvalue().splitlines()
    assert lines[0].startswith("val loss ") and lines[0].endswith(" after 20 steps")
    printed = stdout.getvalue().split("\n", 1)[1]
    assert printed.startswith("ROMEO:")  # model.generate's ids, decoded
    assert "\nROMEO:" in printed  # and then the generator's text, which starts with its prompt
