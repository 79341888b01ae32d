"""Invariant 5: the package never unpickles and never runs remote code (source scan)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "vla_cache_ros"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
UNSAFE_CALLS = {"torch.load", "torch.jit.load", "torch.hub.load", "torch.serialization.load", "pickle.load",
                "pickle.loads", "pickle.Unpickler", "joblib.load", "dill.load", "dill.loads", "pandas.read_pickle",
                "pd.read_pickle"}


def dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, '' otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def violations(source: str, where: str) -> list[str]:
    """Unsafe imports, calls and keyword values in one Python source file."""
    found = []
    if "trust_remote_code=True" in source.replace(" ", ""):
        found.append(f"{where}: the text trust_remote_code=True")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
            if node.module in ("torch", "torch.serialization") and any(a.name == "load" for a in node.names):
                found.append(f"{where}:{node.lineno}: imports torch's load")
        else:
            names = []
        found += [f"{where}:{node.lineno}: imports {name}" for name in names if name in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name in UNSAFE_CALLS:
            found.append(f"{where}:{node.lineno}: calls {name}")
        for keyword in node.keywords:
            value = keyword.value
            if keyword.arg == "trust_remote_code" and not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}:{node.lineno}: trust_remote_code is not the constant False")
            if keyword.arg == "allow_pickle" and not (isinstance(value, ast.Constant) and value.value is False):
                found.append(f"{where}:{node.lineno}: allow_pickle is not the constant False")
        if name.endswith("from_pretrained") and name.split(".")[0].startswith("Auto"):
            passed = {k.arg: k.value for k in node.keywords}
            remote = passed.get("trust_remote_code")
            if not (isinstance(remote, ast.Constant) and remote.value is False):
                found.append(f"{where}:{node.lineno}: {name} without an explicit trust_remote_code=False")
    return found


def package_sources() -> list[Path]:
    """Every Python file of the installed package."""
    return sorted(PACKAGE.rglob("*.py"))


def test_package_has_no_pickle_loading_or_remote_code() -> None:
    sources = package_sources()
    assert len(sources) > 10 and PACKAGE / "models" / "vla.py" in sources
    found = [v for path in sources for v in violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert found == []


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "from joblib import load",
    "from torch import load",
    "import torch\nstate = torch.load('x.bin')",
    "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
    "AutoTokenizer.from_pretrained(path, trust_remote_code=True)",
    "AutoModel.from_pretrained(path, trust_remote_code=flag)",
    "AutoTokenizer.from_pretrained(path, local_files_only=True)",
])
def test_scanner_catches_each_unsafe_pattern(snippet: str) -> None:
    assert violations(snippet, "snippet")


def test_scanner_accepts_the_safe_forms() -> None:
    safe = ("from safetensors import safe_open\nimport numpy as np\nnp.load('x.npz')\n"
            "AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)\n")
    assert violations(safe, "snippet") == []
