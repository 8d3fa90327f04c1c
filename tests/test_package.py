"""The package's public surface: what `import biounet` offers and what it leaves unloaded."""

import subprocess
import sys

HEAVY = ("dask", "distributed", "zarr", "tifffile", "onnx", "onnxruntime", "bioimageio")


def test_import_loads_no_optional_engine():
    # a fresh interpreter: this test session has imported all of them already
    code = (
        "import sys, biounet; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_public_names_resolve():
    import biounet

    for name in biounet.__all__:
        assert getattr(biounet, name) is not None, name
    assert "predict_blockwise" in biounet.__all__
