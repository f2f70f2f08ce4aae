"""The embedded default model: prepared once, verified, reused; `expert model path`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.manifest import embedded

pytestmark = pytest.mark.unit

EXPERT = Path(sys.executable).parent / "expert"


def test_model_path_prints_the_prepared_folder(base_path):
    out = subprocess.run([str(EXPERT), "model", "path"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip())
    assert folder == base_path
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    marker = json.loads((folder / "expert-gateway-prepared.json").read_text())
    assert marker["model_id"] == embedded.EMBEDDED_MODEL_ID


def test_verification_catches_a_changed_file(base_path, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(base_path, copy)
    assert embedded.is_prepared(copy) and embedded.verify(copy)
    data = bytearray((copy / "tokenizer.json").read_bytes())
    data[100] ^= 1  # same size: only the hash can tell
    (copy / "tokenizer.json").write_bytes(bytes(data))
    assert embedded.is_prepared(copy)
    assert not embedded.verify(copy)
    (copy / "model.safetensors").write_bytes(b"truncated")
    assert not embedded.is_prepared(copy)


def test_gguf_comes_from_the_package():
    path = embedded.gguf_path()
    assert path.name == embedded.GGUF_FILENAME and path.stat().st_size > 50_000_000
