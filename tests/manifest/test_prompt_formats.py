"""Prompt formats: hivellm's `qwen3` and legacy `chatml` rendered exactly, the tokenizer's own
template, unknown formats refused, and one training row tokenised identically by the trainer and
the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.manifest import prompt_formats as pf
from server.manifest.artifacts import BaseInfo
from server.manifest.fates import field_fates
from server.manifest.schema import parse_manifest, read_manifest_json
from server.manifest.validate import validate_path

pytestmark = pytest.mark.unit

USER = [{"role": "user", "content": "MATCH (n) RETURN n"}]


def test_qwen3_exact_as_hivellm():
    # hivellm's own expectation for capabilities [query:cypher, feature:pattern_matching]
    text = pf.render_prompt("qwen3", USER, capabilities=["query:cypher", "feature:pattern_matching"])
    assert text == (
        "<|im_start|>system\nDialect: cypher<|im_end|>\n<|im_start|>user\nMATCH (n) RETURN n<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen3_context_before_blank_line_moves_to_system():
    msg = [{"role": "user", "content": "Schema:\nusers(id, name)\n\n  Find all users  "}]
    text = pf.render_prompt("qwen3", msg, capabilities=["database:postgresql"])
    assert text == (
        "<|im_start|>system\nDialect: sql\nSchema:\nusers(id, name)<|im_end|>\n"
        "<|im_start|>user\nFind all users<|im_end|>\n<|im_start|>assistant\n"
    )
    # context already naming a dialect is kept as written
    msg = [{"role": "user", "content": "Dialect: postgres\n\nq"}]
    assert pf.render_prompt("qwen3", msg, capabilities=["sql"]).startswith(
        "<|im_start|>system\nDialect: postgres<|im_end|>\n<|im_start|>user\nq<|im_end|>"
    )
    # text dialect: the context alone, or hivellm's default system text
    msg = [{"role": "user", "content": "\n\nhello"}]
    assert "system\nYou are a helpful AI assistant.<|im_end|>" in pf.render_prompt("qwen3", msg, capabilities=[])


def test_qwen3_explicit_system_is_verbatim():
    msgs = [{"role": "system", "content": "Dialect: sql\nSchema: t(a)"}, {"role": "user", "content": "a\n\nb"}]
    assert pf.render_prompt("qwen3", msgs, capabilities=["json"]) == (
        "<|im_start|>system\nDialect: sql\nSchema: t(a)<|im_end|>\n<|im_start|>user\na\n\nb<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_legacy_chatml_exact_as_hivellm():
    msg = [{"role": "user", "content": "Generate JSON"}]
    # the dialect comes from the capabilities in this format too; "text" gives hivellm's default
    assert pf.render_prompt("chatml", msg, capabilities=["task:x"]) == (
        "<|system|>\nYou are a helpful AI assistant.\n<|end|>\n<|user|>\nGenerate JSON\n<|end|>\n<|assistant|>\n"
    )
    assert pf.render_prompt("chatml", msg, capabilities=["format:json"]) == (
        "<|system|>\nDialect: json\n<|end|>\n<|user|>\nGenerate JSON\n<|end|>\n<|assistant|>\n"
    )
    assert pf.stop_strings("chatml") == ["<|end|>"]
    assert pf.answer_suffix("chatml") == "\n<|end|>"
    assert pf.answer_suffix("qwen3") == "<|im_end|>"
    assert pf.answer_suffix("tokenizer") is None and pf.answer_suffix(None) is None


@pytest.mark.parametrize(
    ("caps", "dialect"),
    [
        (["database:neo4j", "query:sql"], "cypher"),
        (["database:postgresql"], "sql"),
        (["lang:mysql", "format:json"], "sql"),
        (["format:json"], "json"),
        (["language:python"], "python"),
        (["language:rust"], "rust"),
        (["language:javascript"], "typescript"),
        (["language:en"], "text"),
        ([], "text"),
    ],
)
def test_dialect_from_capabilities(caps, dialect):
    assert pf.dialect(caps) == dialect


def test_formats_refuse_what_they_cannot_render():
    with pytest.raises(ValueError, match="one user message"):
        pf.render_prompt("qwen3", [*USER, {"role": "assistant", "content": "x"}, *USER])
    with pytest.raises(ValueError, match="unknown prompt template 'llama3'"):
        pf.render_prompt("llama3", USER)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        pf.render_prompt("tokenizer", USER)


def test_reference_manifests_formats(reference_dir: Path):
    expected = {"expert-sql": "qwen3", "expert-neo4j": "qwen3", "expert-json": "chatml", "expert-typescript": "chatml"}
    for name, template in expected.items():
        raw = read_manifest_json(reference_dir / f"{name}.manifest.json")
        m = parse_manifest(raw)
        assert m.bases()[0][0].prompt_template == template
        fate = next(f for f in field_fates(raw, m) if f.field.endswith("prompt_template"))
        assert fate.fate == "applied" and "hivellm" in fate.detail


def test_unknown_template_makes_expert_not_servable(tmp_path: Path, reference_dir: Path):
    raw = json.loads((reference_dir / "expert-json.manifest.json").read_text())
    raw["base_models"][0]["prompt_template"] = "alpaca"
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    result = validate_path(tmp_path, BaseInfo(name="x"), platform="cpu", engine_defaults={})
    assert result.valid and not result.servable
    assert any("prompt_template: unknown prompt template 'alpaca'" in r for r in result.reasons)
    fate = next(f for f in result.fields if f.field.endswith("prompt_template"))
    assert fate.fate == "refused" and "not servable" in fate.detail


@pytest.mark.parametrize("template", ["tokenizer", "qwen3", "chatml"])
def test_training_row_tokenised_identically_by_trainer_and_server(template: str, base_path: Path):
    """The trainer's tokenised row (prompt part) is exactly what the server sends the engine."""
    from server.engine.prompts import PromptBuilder
    from trainer.data import IGNORE_INDEX, Conversation, tokenize

    builder = PromptBuilder(str(base_path))
    caps = ["database:postgresql"]
    rows = [
        [{"role": "user", "content": "Schema: users(id, name)\n\nFind all users"}],
        [{"role": "system", "content": "Dialect: sql\nSchema: t(a)"}, {"role": "user", "content": "count rows"}],
    ]
    answer = {"role": "assistant", "content": "SELECT * FROM users;"}
    convs = [Conversation(f"rows.jsonl:{i}", [*msgs, answer]) for i, msgs in enumerate(rows, 1)]
    examples = tokenize(builder.tokenizer, convs, 4096, template=template, capabilities=caps)
    for msgs, ex in zip(rows, examples, strict=True):
        n_prompt = sum(1 for label in ex.labels if label == IGNORE_INDEX)
        served = builder.render(msgs, template, caps)
        assert ex.input_ids[:n_prompt] == served
        text = builder.tokenizer.decode(ex.input_ids, skip_special_tokens=False)
        if template == "qwen3":
            assert text.endswith("<|im_start|>assistant\nSELECT * FROM users;<|im_end|>")
        if template == "chatml":
            assert text.endswith("<|assistant|>\nSELECT * FROM users;\n<|end|>")
