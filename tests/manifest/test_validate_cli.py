"""`expert validate` and `expert schema` through the real CLI: the console script in subprocesses
(exit codes and JSON), and `server.cli.main` for some text reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainer.synthetic import BASE_ID, make_lora, manifest, write_expert

pytestmark = pytest.mark.unit

EXPERT_BIN = Path(sys.executable).parent / "expert"
REAL = ("expert-json", "expert-neo4j", "expert-sql", "expert-typescript")
FATES = {"applied", "checked", "refused"}
HIDDEN_SIZE = 576  # SmolLM2-135M


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(EXPERT_BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )


def run_all(*arg_lists: list[str]) -> list[Run]:
    """Run several `expert` commands at once (they are independent processes).

    Tracebacks are checked when a test reads a run (`Runs`, `run`), so one bad case fails
    its own test, not every test sharing the batch."""
    procs = [(args, _start(args)) for args in arg_lists]
    out = []
    for args, proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        out.append(Run(args, proc.returncode, stdout, stderr))
    return out


class Runs(dict):
    """Runs by key; reading one asserts it printed no Python traceback."""

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        for r in value if isinstance(value, tuple) else (value,):
            if isinstance(r, Run):
                assert_no_traceback(r)
        return value


def run(*args: str) -> Run:
    r = run_all(list(args))[0]
    assert_no_traceback(r)
    return r


def assert_no_traceback(r: Run) -> None:
    for stream in (r.stdout, r.stderr):
        assert "Traceback (most recent call last)" not in stream, f"{r.args}:\n{stream[-3000:]}"


def leaves(value: Any, path: str = "") -> list[str]:
    """Leaf fields of decoded JSON: scalars and lists of scalars are leaves (comments included)."""
    if isinstance(value, dict):
        out: list[str] = []
        for k, v in value.items():
            out += leaves(v, f"{path}.{k}" if path else k)
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = []
        for i, v in enumerate(value):
            out += leaves(v, f"{path}[{i}]")
        return out
    return [path]


def field(report: dict[str, Any], name: str) -> dict[str, str]:
    found = [f for f in report["fields"] if f["field"] == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def table_fields(text: str) -> list[str]:
    """Field names of the text report's table (the lines after the FIELD header)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["FIELD", "FATE", "DETAIL"])
    out = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        out.append(line.split()[0])
    return out


# ----------------------------------------------------------------------------- the real manifests


# Text reports of the four real manifests come from one process calling `server.cli.main`
# four times: the grammar compiler (torch, transformers, a tokenizer: seconds) is built once.
_TEXT_DRIVER = """
import contextlib, io, json, sys
from server.cli import main
out = {}
for path in sys.argv[1:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["validate", path])
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def real_runs(reference_dir: Path) -> dict[str, tuple[Run, Run]]:
    """name -> (`expert validate FILE --json`, text report of `validate FILE`), all at once."""
    paths = [str(reference_dir / f"{name}.manifest.json") for name in REAL]
    json_procs = [(path, _start(["validate", path, "--json"])) for path in paths]
    driver = subprocess.Popen(
        [sys.executable, "-c", _TEXT_DRIVER, *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    json_runs = []
    for path, proc in json_procs:
        stdout, stderr = proc.communicate(timeout=300)
        json_runs.append(Run(["validate", path, "--json"], proc.returncode, stdout, stderr))
    stdout, stderr = driver.communicate(timeout=300)
    assert_no_traceback(Run(["text driver"], driver.returncode, stdout, stderr))
    assert driver.returncode == 0, stderr[-3000:]
    texts = json.loads(stdout)
    return Runs(
        {
            name: (json_run, Run(["validate", path], *texts[path], ""))
            for name, path, json_run in zip(REAL, paths, json_runs, strict=True)
        }
    )


@pytest.mark.parametrize("name", REAL)
def test_real_manifest_is_valid_but_not_servable(real_runs, name: str) -> None:
    as_json, as_text = real_runs[name]
    assert as_json.returncode == 2, as_json.stdout + as_json.stderr
    assert as_text.returncode == 2
    report = as_json.json()
    assert report["valid"] is True
    assert report["servable"] is False
    assert report["errors"] == []
    assert {"valid", "servable", "errors", "fields"} <= set(report)
    reasons = " | ".join(report["not_servable_because"])
    assert "F:/Node/hivellm/expert/models/Qwen3-0.6B" in reasons
    assert "dora" in reasons.lower()


@pytest.mark.parametrize("name", REAL)
def test_every_leaf_field_has_exactly_one_fate(reference_dir: Path, real_runs, name: str) -> None:
    raw = json.loads((reference_dir / f"{name}.manifest.json").read_text(encoding="utf-8"))
    expected = leaves(raw)
    assert len(expected) == len(set(expected))
    assert any(p.rsplit(".", 1)[-1].startswith("_") for p in expected)  # comments are leaves too
    report = real_runs[name][0].json()
    listed = [f["field"] for f in report["fields"]]
    assert sorted(listed) == sorted(expected)
    for f in report["fields"]:
        assert f["fate"] in FATES, f
        assert isinstance(f["detail"], str) and f["detail"], f
        assert set(f) == {"field", "fate", "detail"}


@pytest.mark.parametrize("name", REAL)
def test_comment_fields_are_checked_as_comments(real_runs, name: str) -> None:
    report = real_runs[name][0].json()
    comments = [f for f in report["fields"] if f["field"].rsplit(".", 1)[-1].startswith("_")]
    assert comments
    assert all((f["fate"], f["detail"]) == ("checked", "comment") for f in comments)
    assert field(report, "base_models[0].adapters[0]._comment")["fate"] == "checked"


@pytest.mark.parametrize("name", REAL)
def test_dora_adapter_type_is_refused_with_reason(real_runs, name: str) -> None:
    f = field(real_runs[name][0].json(), "base_models[0].adapters[0].type")
    assert f["fate"] == "refused"
    assert "dora" in f["detail"].lower()
    assert "LoRA" in f["detail"]


@pytest.mark.parametrize("name", REAL)
def test_base_model_name_refused_and_fixed_fates(real_runs, name: str) -> None:
    report = real_runs[name][0].json()
    base = field(report, "base_models[0].name")
    assert base["fate"] == "refused"
    assert BASE_ID in base["detail"] and "Qwen3-0.6B" in base["detail"]
    assert field(report, "name")["fate"] == "applied"
    assert field(report, "version")["fate"] == "applied"
    assert field(report, "schema_version")["fate"] == "applied"
    assert field(report, "description")["fate"] == "checked"
    assert field(report, "runtime.candle_compatible")["fate"] == "checked"
    attention = field(report, "runtime.attention_kernel")
    assert attention["fate"] in ("applied", "refused")
    assert "attention_backend" in attention["detail"]
    assert field(report, "training.decoding.temperature")["fate"] == "applied"
    assert field(report, "constraints.load_order")["fate"] == "applied"
    assert field(report, "constraints.max_chain")["fate"] == "checked"
    assert field(report, "training.config.optim")["fate"] == "refused"
    assert field(report, "training.config.learning_rate")["fate"] == "applied"


def test_validation_cmd_is_refused(real_runs) -> None:
    f = field(real_runs["expert-typescript"][0].json(), "training.decoding.validation_cmd")
    assert f["fate"] == "refused"
    assert "command" in f["detail"]


def test_unknown_output_checker_is_refused_and_json_is_applied(real_runs) -> None:
    ts = field(real_runs["expert-typescript"][0].json(), "training.decoding.validation")
    assert ts["fate"] == "refused" and "tsc" in ts["detail"]
    js = field(real_runs["expert-json"][0].json(), "training.decoding.validation")
    assert js["fate"] == "applied" and "JSON" in js["detail"]


@pytest.mark.parametrize(
    ("name", "rules"),
    [
        ("expert-sql", {"expression", "comparison-expr", "logical-expr", "arithmetic-expr"}),
        ("expert-neo4j", {"expression", "comparison", "logical-expr"}),
    ],
)
def test_sql_and_cypher_grammars_reported_left_recursive(real_runs, name: str, rules: set[str]) -> None:
    f = field(real_runs[name][0].json(), "training.decoding.grammar_type")
    detail = f["detail"]
    assert f"{name}.grammar.gbnf" in detail
    assert "left-recursive" in detail
    for rule in rules:
        assert rule in detail


def test_json_grammar_type_is_not_left_recursive(real_runs) -> None:
    f = field(real_runs["expert-json"][0].json(), "training.decoding.grammar_type")
    assert f["fate"] == "applied"
    assert "JSON" in f["detail"] and "left-recursive" not in f["detail"]


def test_soft_prompt_file_missing_is_reported(real_runs) -> None:
    report = real_runs["expert-typescript"][0].json()
    f = field(report, "soft_prompts[0].path")
    assert f["fate"] == "refused" and "ts_style_48.bin" in f["detail"]
    assert any("soft_prompts[0]" in r for r in report["not_servable_because"])


@pytest.mark.parametrize("name", REAL)
def test_text_output_lists_every_field(real_runs, name: str) -> None:
    as_json, as_text = real_runs[name]
    text = as_text.stdout
    first = text.splitlines()[0]
    assert first.startswith(f"{name} ") and "valid, NOT servable here" in first
    report = as_json.json()
    expected = [f["field"] for f in report["fields"]]
    assert table_fields(text) == expected
    by_name = {f["field"]: f for f in report["fields"]}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if parts and parts[0] in by_name:
            assert parts[1] == by_name[parts[0]]["fate"]
    counts = {k: sum(1 for f in report["fields"] if f["fate"] == k) for k in FATES}
    assert (
        f"{len(expected)} fields: {counts['applied']} applied, {counts['checked']} checked, {counts['refused']} refused"
        in text
    )
    assert "not servable: base model not served here" in text


# ----------------------------------------------------------------------------- broken manifests


def _lora_manifest() -> dict[str, Any]:
    return manifest(
        "broken",
        adapter={"type": "lora", "r": 8, "alpha": 16},
        decoding={"temperature": 0.2, "top_p": 0.9, "top_k": 20, "stop_sequences": ["END"]},
    )


def _set(path: list[Any], value: Any) -> Any:
    def mutate() -> dict[str, Any]:
        data = _lora_manifest()
        node: Any = data
        for p in path[:-1]:
            node = node[p]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return data

    return mutate


BROKEN: list[tuple[str, Any, str, str]] = [
    # (id, file content: str as written or callable -> dict, field named (or "" for the file), message fragment)
    ("invalid-json", '{"name": "broken", "version": "1.0.0",,}', "", "invalid JSON"),
    ("truncated-json", '{"name": "broken", "version": ', "", "invalid JSON"),
    ("not-an-object", '["name", "broken"]', "", "a manifest is a JSON object"),
    ("missing-name", _set(["name"], None), "name", "required field is missing"),
    (
        "unknown-key",
        _set(["training", "decoding", "temperatur"], 0.5),
        "training.decoding.temperatur",
        "did you mean 'temperature'",
    ),
    (
        "unknown-adapter-key",
        _set(["base_models", 0, "adapters", 0, "alfa"], 16),
        "base_models[0].adapters[0].alfa",
        "did you mean 'alpha'",
    ),
    ("bad-top_p", _set(["training", "decoding", "top_p"], 1.5), "training.decoding.top_p", "less than or equal to 1"),
    ("top_k-0", _set(["training", "decoding", "top_k"], 0), "training.decoding.top_k", "top_k must be >= 1"),
    (
        "stop-not-strings",
        _set(["training", "decoding", "stop_sequences"], [1, 2]),
        "training.decoding.stop_sequences[0]",
        "valid string",
    ),
    (
        "soft-prompt-without-tokens",
        _set(["soft_prompts"], [{"name": "style", "path": "style.safetensors"}]),
        "soft_prompts[0].tokens",
        "required field is missing",
    ),
    (
        "lora-without-r",
        _set(["base_models", 0, "adapters", 0, "r"], None),
        "base_models[0].adapters[0].r",
        "r required for a lora adapter",
    ),
    ("v2-without-base", _set(["base_models"], None), "base_models", "needs a non-empty base_models"),
    (
        "temperature-3",
        _set(["training", "decoding", "temperature"], 3),
        "training.decoding.temperature",
        "less than or equal to 2",
    ),
]


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Run]]:
    """case id -> (expert folder, `expert validate MANIFEST --json` run); the runs go at once."""
    root = tmp_path_factory.mktemp("broken")
    folders = []
    for case_id, content, _, _ in BROKEN:
        folder = root / case_id
        folder.mkdir()
        text = content if isinstance(content, str) else json.dumps(content(), indent=2)
        (folder / "manifest.json").write_text(text)
        folders.append(folder)
    runs = run_all(*(["validate", str(folder / "manifest.json"), "--json"] for folder in folders))
    return Runs({b[0]: (folder, r) for b, folder, r in zip(BROKEN, folders, runs, strict=True)})


@pytest.mark.parametrize(
    ("case_id", "field_name", "fragment"), [(b[0], b[2], b[3]) for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_manifest_exits_1_naming_the_field(
    broken_runs, capsys: pytest.CaptureFixture[str], case_id: str, field_name: str, fragment: str
) -> None:
    folder, as_json = broken_runs[case_id]
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr
    report = as_json.json()
    assert report["valid"] is False and report["servable"] is False
    assert report["fields"] == []
    matching = [e for e in report["errors"] if e["field"] == field_name]
    assert matching, report["errors"]
    assert fragment in matching[0]["message"]
    assert all(set(e) == {"field", "message"} for e in report["errors"])

    # the text report, through the same entry point as the console script (in this process)
    from server.cli import main

    assert main(["validate", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    shown = field_name or "<manifest>"
    error_lines = [line for line in out.splitlines() if line.strip().startswith("error:")]
    assert any(f"error: {shown}: " in line and fragment in line for line in error_lines), out
    assert out.splitlines()[0] == f"{folder}: invalid"


def test_missing_path_exits_1(tmp_path: Path) -> None:
    r = run("validate", str(tmp_path / "nowhere"), "--json")
    assert r.returncode == 1
    [error] = r.json()["errors"]
    assert error["field"] == "" and "no manifest at" in error["message"]


def test_v1_dora_manifest_is_valid_not_servable(tmp_path: Path) -> None:
    data = {
        "name": "legacy",
        "version": "0.1.0",
        "_comment": "v1, no schema_version",
        "base_model": {"name": BASE_ID},
        "adapters": [{"type": "dora", "r": 8, "alpha": 16}],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    r = run("validate", str(tmp_path), "--json")
    assert r.returncode == 2
    report = r.json()
    assert report["valid"] is True and report["servable"] is False
    assert field(report, "adapters[0].type")["fate"] == "refused"
    assert field(report, "base_model.name")["fate"] == "applied"
    assert sorted(f["field"] for f in report["fields"]) == sorted(leaves(data))


# ----------------------------------------------------------------------------- an expert that can be served here


@pytest.fixture(scope="module")
def lora_template(tmp_path_factory: pytest.TempPathFactory, base_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("lora-template") / "adapter"
    entry = make_lora(base_path, folder, seed=3)
    return folder, entry


def build_expert(
    root: Path,
    template: tuple[Path, dict[str, Any]],
    name: str,
    adapter: dict[str, Any] | None = None,
    decoding: dict[str, Any] | None = None,
    soft_prompts: list[dict[str, Any]] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    folder, entry = template
    shutil.copytree(folder, root / name)
    data = manifest(name, adapter={**entry, **(adapter or {})}, decoding=decoding, soft_prompts=soft_prompts)
    return write_expert(root, data, files)


def _edit_config(expert: Path, **changes: Any) -> None:
    config_file = expert / "adapter_config.json"
    config = json.loads(config_file.read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    config_file.write_text(json.dumps({**config, **changes}))


def _write_soft_prompt(path: Path, shape: tuple[int, int]) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"prompt_embeddings": np.zeros(shape, dtype=np.float32)}, str(path))


SOFT_PROMPT = [{"name": "style", "path": "style.safetensors", "tokens": 4}]
BAD_GRAMMAR = 'root ::= "answer: " missing-rule\n'
TEXT, JSON, STRICT, STRICT_JSON = (), ("--json",), ("--strict",), ("--strict", "--json")


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory: pytest.TempPathFactory, lora_template) -> dict[tuple[str, tuple[str, ...]], Run]:
    """Experts built on a real PEFT LoRA adapter, one per case, validated all at once.

    Returns (case, extra args) -> Run."""
    root = tmp_path_factory.mktemp("lora-experts")
    size = lora_template[1]["size_bytes"]
    cases: dict[str, tuple[Path, list[tuple[str, ...]]]] = {}

    def case(name: str, modes: list[tuple[str, ...]], **kwargs: Any) -> Path:
        expert = build_expert(root, lora_template, name, **kwargs)
        cases[name] = (expert, modes)
        return expert

    case("servable", [TEXT, JSON, STRICT])
    case("strict-refused", [TEXT, STRICT, STRICT_JSON], decoding={"temperature": 0.3, "validation_cmd": "rm -rf /"})
    _edit_config(case("r-differs", [TEXT, JSON]), r=4)
    _edit_config(case("type-differs", [JSON]), use_dora=True)
    case("sha-mismatch", [TEXT, JSON], adapter={"sha256": "0" * 64})
    case("size-mismatch", [JSON], adapter={"size_bytes": size + 1})
    for name, shape in (("sp-width", (4, 100)), ("sp-tokens", (3, HIDDEN_SIZE)), ("sp-ok", (4, HIDDEN_SIZE))):
        _write_soft_prompt(case(name, [TEXT, JSON], soft_prompts=SOFT_PROMPT) / "style.safetensors", shape)
    case(
        "grammar-bad",
        [TEXT, JSON],
        files={"grammar.gbnf": BAD_GRAMMAR},
        decoding={"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "grammar.gbnf"},
    )
    case("grammar-missing", [JSON], decoding={"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "nope.gbnf"})
    (case("config-not-object", [JSON]) / "adapter_config.json").write_text("[1, 2]")
    (case("config-not-json", [JSON]) / "adapter_config.json").write_text("{not json")

    keys = [(name, mode) for name, (_, modes) in cases.items() for mode in modes]
    runs = run_all(*(["validate", str(cases[name][0]), *mode] for name, mode in keys))
    return Runs(zip(keys, runs, strict=True))


def test_servable_expert_exits_0(lora_runs) -> None:
    as_json = lora_runs["servable", JSON]
    assert as_json.returncode == 0, as_json.stdout
    report = as_json.json()
    assert report["valid"] is True and report["servable"] is True and report["errors"] == []
    assert report["not_servable_because"] == []
    assert [f["field"] for f in report["fields"] if f["fate"] == "refused"] == []
    assert field(report, "base_models[0].name")["fate"] == "applied"
    assert field(report, "base_models[0].adapters[0].type")["fate"] == "applied"
    assert "agrees with adapter_config.json" in field(report, "base_models[0].adapters[0].r")["detail"]
    sha = field(report, "base_models[0].adapters[0].sha256")
    assert sha["fate"] == "applied" and "verified" in sha["detail"]
    as_text = lora_runs["servable", TEXT]
    assert as_text.returncode == 0
    assert as_text.stdout.splitlines()[0] == "servable 1.0.0 (schema 2.0): valid, servable here"
    assert table_fields(as_text.stdout) == [f["field"] for f in report["fields"]]
    assert lora_runs["servable", STRICT].returncode == 0  # nothing refused: --strict changes nothing


def test_strict_with_a_refused_field_exits_2(lora_runs) -> None:
    assert lora_runs["strict-refused", TEXT].returncode == 0, lora_runs["strict-refused", TEXT].stdout
    strict = lora_runs["strict-refused", STRICT]
    assert strict.returncode == 2
    assert "--strict" in strict.stdout
    strict_json = lora_runs["strict-refused", STRICT_JSON]
    assert strict_json.returncode == 2
    report = strict_json.json()
    assert report["valid"] is True and report["servable"] is True
    refused = [f["field"] for f in report["fields"] if f["fate"] == "refused"]
    assert refused == ["training.decoding.validation_cmd"]


def test_adapter_config_disagreeing_exits_1(lora_runs) -> None:
    as_text = lora_runs["r-differs", TEXT]
    assert as_text.returncode == 1
    assert "error: base_models[0].adapters[0].r: manifest says 8, adapter_config.json says 4" in as_text.stdout
    as_json = lora_runs["r-differs", JSON]
    assert as_json.returncode == 1
    report = as_json.json()
    assert report["valid"] is False and report["servable"] is False
    assert [e["field"] for e in report["errors"]] == ["base_models[0].adapters[0].r"]
    assert field(report, "base_models[0].adapters[0].r")["fate"] == "refused"


def test_adapter_type_disagreeing_with_config_exits_1(lora_runs) -> None:
    r = lora_runs["type-differs", JSON]
    assert r.returncode == 1
    [error] = r.json()["errors"]
    assert error["field"] == "base_models[0].adapters[0].type" and "'dora'" in error["message"]


def test_sha256_mismatch_exits_1(lora_runs) -> None:
    as_text = lora_runs["sha-mismatch", TEXT]
    assert as_text.returncode == 1
    assert (
        "error: base_models[0].adapters[0].sha256: sha256 of adapter_model.safetensors does not match" in as_text.stdout
    )
    as_json = lora_runs["sha-mismatch", JSON]
    assert as_json.returncode == 1
    assert [e["field"] for e in as_json.json()["errors"]] == ["base_models[0].adapters[0].sha256"]


def test_size_mismatch_exits_1(lora_runs) -> None:
    r = lora_runs["size-mismatch", JSON]
    assert r.returncode == 1
    assert [e["field"] for e in r.json()["errors"]] == ["base_models[0].adapters[0].size_bytes"]


def test_soft_prompt_of_wrong_width_exits_1(lora_runs) -> None:
    as_text, as_json = lora_runs["sp-width", TEXT], lora_runs["sp-width", JSON]
    assert as_text.returncode == 1 and as_json.returncode == 1
    assert f"error: soft_prompts[0].path: tensor width 100 != hidden size {HIDDEN_SIZE}" in as_text.stdout
    [error] = as_json.json()["errors"]
    assert error["field"] == "soft_prompts[0].path"
    assert "100" in error["message"] and str(HIDDEN_SIZE) in error["message"]


def test_soft_prompt_with_wrong_token_count_exits_1(lora_runs) -> None:
    r = lora_runs["sp-tokens", JSON]
    assert r.returncode == 1
    [error] = r.json()["errors"]
    assert error == {"field": "soft_prompts[0].tokens", "message": "tensor has 3 tokens, manifest says 4"}


def test_soft_prompt_of_right_shape_exits_0(lora_runs) -> None:
    r = lora_runs["sp-ok", JSON]
    assert r.returncode == 0, r.stdout
    report = r.json()
    assert report["errors"] == [] and report["servable"] is True
    tokens = field(report, "soft_prompts[0].tokens")
    assert tokens["fate"] == "applied" and f"[4, {HIDDEN_SIZE}]" in tokens["detail"]


def test_grammar_that_does_not_compile_exits_2_with_reason(lora_runs) -> None:
    as_text = lora_runs["grammar-bad", TEXT]
    assert as_text.returncode == 2, as_text.stdout
    assert "valid, NOT servable here" in as_text.stdout.splitlines()[0]
    assert "not servable: training.decoding.grammar_file: grammar.gbnf does not compile" in as_text.stdout
    assert "missing-rule" in as_text.stdout
    as_json = lora_runs["grammar-bad", JSON]
    assert as_json.returncode == 2
    report = as_json.json()
    assert report["valid"] is True and report["servable"] is False
    f = field(report, "training.decoding.grammar_file")
    assert f["fate"] == "refused"
    assert "does not compile with xgrammar" in f["detail"] and "missing-rule" in f["detail"]
    assert any("missing-rule" in reason for reason in report["not_servable_because"])


def test_grammar_file_missing_is_not_servable(lora_runs) -> None:
    r = lora_runs["grammar-missing", JSON]
    assert r.returncode == 2
    f = field(r.json(), "training.decoding.grammar_file")
    assert f["fate"] == "refused" and "nope.gbnf" in f["detail"]


@pytest.mark.parametrize(
    ("name", "fragment"), [("config-not-object", "not a JSON object"), ("config-not-json", "unreadable")]
)
def test_unreadable_adapter_config_exits_1_without_traceback(lora_runs, name: str, fragment: str) -> None:
    r = lora_runs[name, JSON]
    assert r.returncode == 1
    [error] = r.json()["errors"]
    assert error["field"] == "base_models[0].adapters[0]" and fragment in error["message"]


def test_bad_integrity_hash_map_exits_1_without_traceback(tmp_path: Path) -> None:
    data = manifest("integrity")
    data["integrity"] = {"files": {"adapter_model.safetensors": "not-a-hash"}}
    write_expert(tmp_path, data)
    r = run("validate", str(tmp_path / "integrity"), "--json")
    assert r.returncode == 1
    assert [e["field"] for e in r.json()["errors"]] == ["integrity.files.adapter_model.safetensors"]


# ----------------------------------------------------------------------------- expert schema


def test_schema_prints_valid_json(reference_dir: Path) -> None:
    r = run("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "expert manifest"
    assert "base_models" in schema["properties"]
    assert "Decoding" in schema["$defs"]
    jsonschema = pytest.importorskip("jsonschema")
    raw = json.loads((reference_dir / "expert-sql.manifest.json").read_text(encoding="utf-8"))
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(raw)) == []
