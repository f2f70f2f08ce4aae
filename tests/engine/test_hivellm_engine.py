"""A hivellm-style expert end to end on a tiny Qwen3: DoRA adapter, `qwen3` prompt format,
shipped as a signed `.expert`, named against a Windows path of its base; installed,
converted to LoRA, served by the real engine; plus an expert trained by the trainer on the
same Qwen3. One extra server (tiny Qwen3, float32) for the whole file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import TEMPLATES, _start_server, _stop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trainer.synthetic import make_dora, make_tiny_qwen3

pytestmark = pytest.mark.engine

HIVE_BASE = "F:/Node/hivellm/expert/models/Qwen3-0.6B"
CAPS = ["database:postgresql", "query:sql"]
PROMPTS = ["Schema: users(id, name)\n\nFind all users", "List the orders of 2024", "Count rows"]
TRAIN_ROWS = [
    ("Schema: users(id, name)", "Find all users", "SELECT * FROM users;"),
    ("Schema: orders(id, total)", "Sum all totals", "SELECT SUM(total) FROM orders;"),
    ("Schema: items(id)", "Count items", "SELECT COUNT(*) FROM items;"),
]


def _hive_manifest(name: str, adapter: dict, **extra) -> dict:
    return {
        "name": name,
        "version": "0.1.0",
        "schema_version": "2.0",
        "capabilities": CAPS,
        "base_models": [{"name": HIVE_BASE, "prompt_template": "qwen3", "adapters": [adapter]}],
        "training": {"decoding": {"temperature": 0, "max_tokens": 12}, **extra},
    }


@pytest.fixture(scope="module")
def hive(tmp_path_factory: pytest.TempPathFactory, base_path: Path):
    from server.experts.dora import convert_expert
    from server.manifest.package import pack, public_key_text, unpack
    from trainer.cli import run_train

    root = tmp_path_factory.mktemp("hive")
    tiny = make_tiny_qwen3(base_path, root / "tiny-qwen3")
    # its own chat template renders tools (the experts use hivellm's qwen3 format): tool_choice "auto"
    shutil.copy2(TEMPLATES / "hermes_tools.jinja", tiny / "chat_template.jinja")
    experts = root / "experts"
    experts.mkdir()

    # an expert trained by the trainer on the tiny Qwen3, hivellm's dataset format (`text` rows)
    trained = experts / "qwen3-trained"
    (trained / "datasets").mkdir(parents=True)
    rows = [
        {
            "text": f"<|im_start|>system\nDialect: sql\n{ctx}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
            f"<|im_start|>assistant\n{a}<|im_end|>\n"
        }
        for ctx, q, a in TRAIN_ROWS
    ]
    (trained / "datasets" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lora = {"type": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    data = _hive_manifest(
        "qwen3-trained",
        lora,
        dataset={"path": "datasets/train.jsonl"},
        config={"batch_size": 3, "learning_rate": 0.01, "lr_scheduler": "constant"},
    )
    (trained / "manifest.json").write_text(json.dumps(data, indent=2))
    assert run_train(trained, max_steps=8, model=str(tiny)) == 0

    # a DoRA expert, packaged and signed, installed, converted
    src = root / "src" / "expert-sql-mini"
    entry = make_dora(tiny, src, seed=5, steps=20, lr=0.02)
    (src / "manifest.json").write_text(json.dumps(_hive_manifest("expert-sql-mini", entry), indent=2))
    key = Ed25519PrivateKey.generate()
    package = pack(src, root / "dist", key)
    installed = unpack(package, root / "installed", trusted_keys=[public_key_text(key)])
    report = convert_expert(
        installed.path, experts / "expert-sql-mini", str(tiny), max_lora_rank=128, rank=128, tokens=12
    )

    env = {
        "EXPERT_MODEL": str(tiny),
        "EXPERT_MODEL_ALIASES": json.dumps([HIVE_BASE]),
        "EXPERT_MAX_MODEL_LEN": "512",
        "EXPERT_MAX_LORA_RANK": "128",
        "EXPERT_TOOL_PARSER": "hermes",
    }
    running = _start_server(experts, tmp_path_factory.mktemp("logs") / "qwen3.log", env)
    try:
        yield {"server": running, "tiny": tiny, "experts": experts, "dora": installed.path, "report": report}
    finally:
        _stop(running.process)
        shutil.rmtree(root / "installed", ignore_errors=True)


def _served(url: str, model: str, prompt: str) -> list[int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": 0,
        "return_token_ids": True,
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def _reference(expert_dir: Path, tiny: Path, prompt: str) -> list[int]:
    from trainer.reference import greedy_tokens, load_expert

    loaded = load_expert(expert_dir, None, base_source=str(tiny))
    return greedy_tokens(loaded, [{"role": "user", "content": prompt}], max_new_tokens=12)


def test_hivellm_experts_load_under_the_alias(hive):
    url = hive["server"].url
    models = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    assert {"qwen3-trained", "expert-sql-mini"} <= models, hive["server"].log()[-3000:]
    detail = httpx.get(f"{url}/experts/expert-sql-mini", timeout=30).json()
    text = json.dumps(detail)
    assert "hivellm's qwen3 format" in text
    report = json.loads((hive["experts"] / "expert-sql-mini" / "conversion.json").read_text())
    assert report["rank"] == 128 and report["dora_rank"] == 8 and report["prompts"] > 0
    print(f"tiny Qwen3 conversion: {hive['report'].summary()}")  # the README's numbers (pytest -s)


def test_trained_qwen3_expert_serves_what_peft_computes(hive):
    for prompt in PROMPTS:
        served = _served(hive["server"].url, "qwen3-trained", prompt)
        assert served == _reference(hive["experts"] / "qwen3-trained", hive["tiny"], prompt), prompt


def test_converted_dora_expert_serves_the_lora_and_matches_dora(hive):
    # at full rank (128 = the hidden size) the conversion is exact: the engine serving the LoRA
    # answers what PEFT's DoRA answers. (At rank 16 it does not on this random model: measured
    # relative error 0.33 max / 0.26 mean, 0/8 identical greedy continuations, 76% agreement.)
    assert hive["report"].max_rel_error < 1e-5, hive["report"].summary()
    for prompt in PROMPTS:
        served = _served(hive["server"].url, "expert-sql-mini", prompt)
        # the engine computes exactly the converted LoRA adapter
        assert served == _reference(hive["experts"] / "expert-sql-mini", hive["tiny"], prompt), prompt
        assert served == _reference(hive["dora"], hive["tiny"], prompt), prompt


def test_auto_tool_choice_runs_through_the_engine_with_the_tools_in_the_prompt(hive):
    """On a base whose template renders tools, with vLLM's hermes parser: "auto" reaches the
    real engine, the prompt carries the tools, and the answer (this random model's text, or
    calls if it wrote any) validates as the OpenAI SDK's ChatCompletion."""
    from openai.types.chat import ChatCompletion

    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = {
        "model": str(hive["tiny"]),
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": [weather],
        "temperature": 0,
        "max_tokens": 16,
    }
    url = hive["server"].url
    auto = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    none = httpx.post(f"{url}/v1/chat/completions", json={**body, "tool_choice": "none"}, timeout=120)
    assert auto.status_code == 200 and none.status_code == 200, (auto.text, none.text)
    completion = ChatCompletion.model_validate(auto.json())
    # the tools' block of the template: far more prompt than without tools
    assert completion.usage is not None and completion.usage.prompt_tokens > none.json()["usage"]["prompt_tokens"] + 50
    message = completion.choices[0].message
    assert (message.tool_calls is not None) == (completion.choices[0].finish_reason == "tool_calls")
