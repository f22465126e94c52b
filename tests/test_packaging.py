"""Installing the project must not change what `transformers` does (our `kernels` is a generic name)."""
import importlib
import subprocess
import sys
from pathlib import Path


def test_transformers_does_not_take_our_kernels_for_hf_kernels():
    import kernels
    from transformers.utils import import_utils
    project_root = Path(importlib.import_module("engine").__file__).resolve().parents[1]
    assert Path(kernels.__file__).resolve().is_relative_to(project_root)  # it is ours that is importable
    assert import_utils.is_kernels_available() is False


def test_transformers_bert_imports_in_a_fresh_process_with_our_packages_importable():
    code = ("import engine, kernels; from transformers import BertForMaskedLM, BertConfig; "
            "m = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, "
            "num_attention_heads=2, intermediate_size=32)); print(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("BertForMaskedLM")


def test_every_package_data_pattern_in_setup_py_names_existing_files():
    import ast
    root = Path(__file__).resolve().parents[1]
    call = next(n for n in ast.walk(ast.parse((root / "setup.py").read_text(encoding="utf-8")))
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    data = next((ast.literal_eval(k.value) for k in call.keywords if k.arg == "package_data"), {})
    missing = [f"{package}/{pattern}" for package, patterns in data.items() for pattern in patterns
               if not list((root / package.replace(".", "/")).glob(pattern))]
    assert missing == []
