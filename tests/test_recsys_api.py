import importlib
import subprocess
import sys

import trl_dynamicpo.recsys as recsys


def test_every_public_name_resolves():
    assert set(recsys.__all__) == set(recsys._LAZY)
    for name in recsys.__all__:
        assert getattr(recsys, name) is getattr(
            importlib.import_module(f"trl_dynamicpo.recsys.{recsys._LAZY[name]}"), name
        )


def test_import_is_light():
    code = "import sys, trl_dynamicpo.recsys as r; r.read_examples; r.leak_check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
