"""A checkpoint laid out like OpenVLA's published export (auto_map entries pointing at remote-code
Python files, a LlamaTokenizer class name) loads without running that code and without waiting
for an interactive "trust remote code?" answer."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REMOTE_CODE = """
import pathlib
pathlib.Path(__file__).with_name("REMOTE_CODE_RAN").write_text("executed")
"""

SCRIPT = """
import sys, numpy as np
from vla_cache_ros.models import load_vla
model = load_vla(sys.argv[1])
action = model.predict_action(np.full((120, 160, 3), 90, np.uint8), "pick up the red cube", unnorm_key="tiny_sim")
print("action", action.shape)
ids = model.prompt_ids("pick up the red cube").tolist()
print("bos first", ids[0] == model.tokenizer.bos_token_id, "ends with 29871", ids[-1] == 29871)
"""


def _as_published_export(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for name in ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py"):
        (target / name).write_text(REMOTE_CODE)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                          "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}
    (target / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoProcessor": "processing_prismatic.PrismaticProcessor"}
    tokenizer_config["tokenizer_class"] = "LlamaTokenizer"  # as in OpenVLA's tokenizer_config.json
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    preprocessor = json.loads((target / "preprocessor_config.json").read_text())
    preprocessor["auto_map"] = {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                                "AutoProcessor": "processing_prismatic.PrismaticProcessor"}
    (target / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return target


def test_published_layout_loads_without_running_or_asking_about_remote_code(tiny_dir: Path, tmp_path: Path):
    checkpoint = _as_published_export(tiny_dir, tmp_path / "openvla-like")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(checkpoint)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "action (7,)" in result.stdout
    assert "bos first True ends with 29871 True" in result.stdout
    assert not (checkpoint / "REMOTE_CODE_RAN").exists()
    assert "trust_remote_code" not in result.stdout + result.stderr
