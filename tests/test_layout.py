"""The shape of the house: file sizes a reader can take in, one door to the kernels, an
importable plain checkout, and a README that lists the reading path as it is."""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE = 600           # code lines in any one file of the package
MAX_READING_PATH = 1800  # code lines of the naive reading path, all together


def code_lines(path):
    """Lines that hold something besides blanks and comments (docstrings count)."""
    return sum(1 for line in Path(path).read_text().splitlines()
               if line.strip() and not line.strip().startswith("#"))


def package_files():
    return sorted(p for d in ("minifcn", "kernels") for p in (ROOT / d).rglob("*.py")
                  if "__pycache__" not in p.parts)


def readme_reading_table():
    """[(path, lines)] from the README's "How to read minifcn" table, in its order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## How to read minifcn", 1)
    assert len(section) == 2, "README.md has no '## How to read minifcn' section"
    body = section[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*\d+\s*\|\s*`([^`]+)`\s*\|\s*(\d+)\s*\|", body, re.M)
    return [(p, int(n)) for p, n in rows], body


def test_code_line_counter_ignores_blanks_and_comments(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('"""doc"""\n\n# a comment\nx = 1  # trailing\n    # indented comment\n')
    assert code_lines(f) == 2


def test_no_file_passes_the_line_limit():
    big = {str(p.relative_to(ROOT)): code_lines(p) for p in package_files()
           if code_lines(p) > MAX_FILE}
    assert not big, f"files over {MAX_FILE} code lines: {big}"


def test_readme_lists_the_reading_path_with_its_line_counts():
    rows, body = readme_reading_table()
    assert len(rows) >= 7, "the reading table lists too few files"
    total = 0
    for path, stated in rows:
        assert (ROOT / path).is_file(), f"README's reading path names {path}, which is not there"
        actual = code_lines(ROOT / path)
        # the README is a guide, not a ledger: it may lag small edits, not a rewrite
        assert abs(actual - stated) <= max(10, stated // 10), \
            f"README says {path} has {stated} code lines; it has {actual}"
        total += actual
    assert total <= MAX_READING_PATH, f"the reading path is {total} code lines"
    m = re.search(r"(\d[\d,]*) code lines in all", body)
    assert m, "the reading table states no total ('N code lines in all')"
    assert abs(int(m.group(1).replace(",", "")) - total) <= max(20, total // 10)


def _imports_get_from_kernels(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "kernels":
            if any(a.name == "get" for a in node.names):
                return True
        if isinstance(node, ast.Attribute) and node.attr == "get" and \
                isinstance(node.value, ast.Name) and node.value.id == "kernels":
            return True
    return False


def test_functional_is_the_only_caller_of_the_dispatch_table():
    callers = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "minifcn").rglob("*.py")) +
               sorted((ROOT / "examples").glob("*.py"))
               if _imports_get_from_kernels(ast.parse(p.read_text()))]
    assert callers == ["minifcn/functional.py"]


def test_the_checker_would_see_a_second_caller():
    assert _imports_get_from_kernels(ast.parse("from .kernels import get\n"))
    assert _imports_get_from_kernels(ast.parse("from minifcn import kernels\nkernels.get('relu')"))
    assert not _imports_get_from_kernels(ast.parse("d = {}\nd.get('relu')"))


def test_coordmap_and_examples_know_nothing_they_should_not():
    tree = ast.parse((ROOT / "minifcn" / "coordmap.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.split(".")[-1] == "layers" for m in imported), \
        "coordmap.py composes what layers say; it must not import the layer types"
    for ex in sorted((ROOT / "examples").glob("*.py")):
        tree = ast.parse(ex.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {f"{n.module}.{a.name}" for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) for a in n.names}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "minifcn.cli" not in names, f"{ex.name} imports the command-line module"


def test_setup_cfg_names_only_what_exists():
    cfg = (ROOT / "setup.cfg").read_text()
    dirs = re.findall(r"^\s+[\w.]+\s*=\s*([\w/]+)\s*$", cfg.split("package_dir", 1)[1]
                      .split("install_requires", 1)[0], re.M)
    assert dirs, "setup.cfg maps no package directories"
    for d in dirs:
        assert (ROOT / d / "__init__.py").is_file(), f"setup.cfg maps a package to {d}/"
    for f in re.findall(r"file:\s*(\S+)", cfg):
        assert (ROOT / f).is_file(), f"setup.cfg cites {f}, which is not there"


def test_a_plain_checkout_imports_without_installing(tmp_path):
    """Copy the two package folders somewhere nobody installed them, run without site
    (so the editable install's finder is not there) and use an op on each host device."""
    for d in ("minifcn", "kernels"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    site = os.path.dirname(os.path.dirname(np.__file__))    # numpy, numba, ... but not minifcn
    code = ("import numpy as np, minifcn\n"
            "from minifcn import functional as F\n"
            "assert minifcn.kernels.__file__.startswith(%r), minifcn.kernels.__file__\n"
            "x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)\n"
            "print(float(F.max_pool2d(x, 2, device='numpy')[0].sum()),"
            " float(F.relu(x - 8, device='cpu').sum()))\n") % str(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = site
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["40.0", "28.0"]


@pytest.mark.parametrize("name", ["fcn8s_tiny", "fcn32s"])
def test_models_build_is_the_one_way_by_name(name):
    from minifcn import models
    net = models.build(name, num_classes=3, loss=False, materialize=False)
    assert net.outputs == ["score"]
    with pytest.raises(models.UnknownModel, match="unknown model 'fcn9s'.*fcn8s"):
        models.build("fcn9s")


def test_every_module_imports_on_its_own():
    """Each module imported first, in a clean state (catches import cycles such as a registry
    importing the module that imports it back)."""
    names = sorted("minifcn." + ".".join(p.relative_to(ROOT / "minifcn").with_suffix("").parts)
                   for p in (ROOT / "minifcn").rglob("*.py") if "__pycache__" not in p.parts)
    names = [n.removesuffix(".__init__") for n in names if not n.endswith("__main__")]
    code = ("import importlib, sys\nbad = []\n"
            "for name in %r:\n"
            "    for m in [m for m in sys.modules if m == 'minifcn' or m.startswith('minifcn.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad))\n") % names
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout
