"""The trainer: dataset checks, soft prompt files, and one tiny end-to-end training run."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.manifest.soft_prompt import load_soft_prompt
from trainer.cli import run_train
from trainer.data import DatasetError, load_conversations, row_to_messages
from trainer.loop import lr_at

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
HIDDEN = 576


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model runs are dominated by small ops: one thread is as fast when the machine
    is idle and many times faster when other processes share the cores (OpenMP spin-waits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _manifest(**overrides) -> dict:
    m = {
        "schema_version": "2.0",
        "name": "tiny",
        "_comment": "a comment the trainer must keep",
        "version": "0.0.1",
        "base_models": [
            {
                "name": BASE,
                "prompt_template": "tokenizer",
                "adapters": [
                    {
                        "type": "lora",
                        "r": 2,
                        "alpha": 4,
                        "dropout": 0.0,
                        "target_modules": ["q_proj", "v_proj"],
                        "_note": "kept",
                    }
                ],
            }
        ],
        "soft_prompts": [
            {
                "name": "sp",
                "path": "soft_prompts/sp.safetensors",
                "tokens": 4,
                "init_method": "text",
                "init_text": "Answer in JSON.",
            }
        ],
        "training": {
            "dataset": {"path": "datasets/train.jsonl", "format": "jsonl"},
            "config": {"batch_size": 2, "learning_rate": 0.001, "prompt_learning_rate": 0.01, "seed": 1},
        },
    }
    m.update(overrides)
    return m


GOOD_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Say hi as JSON"},
            {"role": "assistant", "content": '{"greeting": "hi"}'},
        ]
    },
    {"prompt": "Say bye as JSON", "completion": '{"greeting": "bye"}'},
    {"text": '<|im_start|>user\nSay hello as JSON<|im_end|>\n<|im_start|>assistant\n{"greeting": "hello"}<|im_end|>\n'},
]


def make_expert(root: Path, lines: list[str] | None = None, manifest: dict | None = None) -> Path:
    expert = root / "tiny"
    (expert / "datasets").mkdir(parents=True)
    (expert / "manifest.json").write_text(json.dumps(manifest or _manifest(), indent=2) + "\n")
    if lines is None:
        lines = [json.dumps(r) for r in GOOD_ROWS]
    (expert / "datasets" / "train.jsonl").write_text("\n".join(lines) + "\n")
    return expert


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- dataset errors


@pytest.mark.unit
def test_missing_dataset_file_is_a_clear_error(tmp_path, capsys):
    expert = make_expert(tmp_path)
    (expert / "datasets" / "train.jsonl").unlink()
    before = snapshot(expert)
    assert run_train(expert, max_steps=1) == 2
    err = capsys.readouterr().err
    assert "train.jsonl" in err and "file not found" in err
    assert "Traceback" not in err
    assert snapshot(expert) == before


@pytest.mark.unit
def test_bad_json_line_is_reported_with_its_line_and_nothing_is_written(tmp_path, capsys):
    lines = [json.dumps(GOOD_ROWS[0]), '{"prompt": "x", "completion": ', json.dumps(GOOD_ROWS[1])]
    expert = make_expert(tmp_path, lines)
    before = snapshot(expert)
    assert run_train(expert, max_steps=1) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "invalid JSON" in err
    assert "line 1" not in err and "line 3" not in err
    assert "Traceback" not in err
    assert snapshot(expert) == before  # no adapter, no soft prompt, manifest untouched


@pytest.mark.unit
def test_row_without_assistant_target_names_its_line(tmp_path, capsys):
    no_target = {"messages": [{"role": "user", "content": "hi"}]}
    lines = [json.dumps(GOOD_ROWS[0]), json.dumps(GOOD_ROWS[1]), json.dumps(no_target)]
    expert = make_expert(tmp_path, lines)
    before = snapshot(expert)
    assert run_train(expert, max_steps=1) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "assistant" in err
    assert snapshot(expert) == before


@pytest.mark.unit
def test_every_bad_row_is_listed(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(GOOD_ROWS[0]),
                "[1, 2]",
                json.dumps({"prompt": "only a prompt"}),
                "",
                json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}),
                json.dumps({"question": "q", "answer": "a"}),
            ]
        )
    )
    with pytest.raises(DatasetError) as info:
        load_conversations(path)
    problems = info.value.problems
    assert [p.split(":")[0].rsplit(" ", 1)[-1] for p in problems] == ["2", "3", "5", "6"]
    assert "JSON object" in problems[0]
    assert "'completion' is missing" in problems[1]
    assert "content' must be a string" in problems[2]
    assert "keys found: answer, question" in problems[3]


@pytest.mark.unit
def test_row_formats_and_field_mapping():
    chat = row_to_messages(GOOD_ROWS[0])
    assert chat[-1] == {"role": "assistant", "content": '{"greeting": "hi"}'}
    pc = row_to_messages(
        {"instruction": "q", "output": "a", "sys": "s"},
        {"messages": "messages", "prompt": "instruction", "completion": "output", "system": "sys", "text": "text"},
    )
    assert pc == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    text = row_to_messages(GOOD_ROWS[2])
    assert text == [
        {"role": "user", "content": "Say hello as JSON"},
        {"role": "assistant", "content": '{"greeting": "hello"}'},
    ]
    with pytest.raises(ValueError, match="ChatML"):
        row_to_messages({"text": "just some text"})
    with pytest.raises(ValueError, match="last message must have role 'assistant'"):
        row_to_messages({"text": "<|im_start|>user\nq<|im_end|>\n"})


@pytest.mark.unit
def test_unknown_field_mapping_key_is_refused(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD_ROWS[0]) + "\n")
    with pytest.raises(DatasetError, match="field_mapping: unknown field 'answer'"):
        load_conversations(path, {"answer": "output"})


@pytest.mark.unit
def test_non_lora_adapter_is_refused(tmp_path, capsys):
    m = _manifest()
    m["base_models"][0]["adapters"][0]["type"] = "dora"
    expert = make_expert(tmp_path, manifest=m)
    assert run_train(expert, max_steps=1) == 2
    err = capsys.readouterr().err
    assert "dora" in err and "only 'lora'" in err


@pytest.mark.unit
def test_loss_is_only_on_the_answer_and_end_of_turn():
    from trainer.base_model import load_tokenizer, resolve_base
    from trainer.data import Conversation, tokenize

    tok = load_tokenizer(resolve_base(BASE))
    messages = row_to_messages(GOOD_ROWS[0])
    [ex] = tokenize(tok, [Conversation("x:1", messages)], 256)
    learned = [t for t in ex.labels if t != -100]
    assert tok.decode(learned) == '{"greeting": "hi"}<|im_end|>'
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(ex.labels) - len(learned)
    assert tok.decode(ex.input_ids[:n_prompt]) == prompt
    assert ex.labels[:n_prompt] == [-100] * n_prompt
    with pytest.raises(DatasetError, match=r"longer than training\.config\.max_seq_length"):
        tokenize(tok, [Conversation("x:1", messages)], 10)


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["lora", "soft_prompt"])
def test_answer_loss_equals_the_models_own_loss(kind):
    """The training loss projects only the answer positions to the vocabulary; it must be the
    loss the model computes over the whole sequence, for rows whose prompts differ in length,
    with a LoRA and with a soft prompt's virtual tokens in front."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from trainer.base_model import load_model, load_tokenizer, pad_id, resolve_base
    from trainer.data import Conversation, collate, tokenize
    from trainer.loop import answer_loss
    from trainer.lora import lora_config
    from trainer.plan import LoraPlan

    source = resolve_base(BASE)
    tok = load_tokenizer(source)
    rows = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": '{"a": 1}'}],
        [
            {"role": "user", "content": "a much longer question, so that this prompt is the longer one"},
            {"role": "assistant", "content": "a longer answer of several words"},
        ],
    ]
    examples = tokenize(tok, [Conversation(f"x:{i}", r) for i, r in enumerate(rows)], 256)
    assert len({e.labels.index(next(t for t in e.labels if t != -100)) for e in examples}) == 2
    batch = collate(examples, pad_id(tok))
    torch.manual_seed(0)
    if kind == "lora":
        plan = LoraPlan(0, 0, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], path="adapter")
        model = get_peft_model(load_model(source), lora_config(plan))
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter change the output
                torch.nn.init.normal_(param, std=0.02)
    else:
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)
        model = get_peft_model(load_model(source), config)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).loss
        got = answer_loss(model, batch)
    assert torch.isclose(got, expected, rtol=1e-5), (got, expected)


@pytest.mark.unit
def test_learning_rate_schedule():
    assert lr_at(0, 100, 10, 1.0, "cosine") == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0, "cosine") == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(55, 100, 10, 1.0, "linear") == pytest.approx(0.5)
    assert lr_at(99, 100, 10, 1.0, "constant") == 1.0


# ----------------------------------------------------------------------------- soft prompt files


@pytest.mark.unit
def test_load_soft_prompt_safetensors(tmp_path):
    t = torch.randn(4, HIDDEN)
    save_file({"prompt_embeddings": t}, str(tmp_path / "named.safetensors"))
    assert torch.equal(load_soft_prompt(tmp_path / "named.safetensors"), t)
    save_file({"whatever": t.to(torch.bfloat16)}, str(tmp_path / "single.safetensors"))
    got = load_soft_prompt(tmp_path / "single.safetensors")
    assert got.dtype == torch.float32 and got.shape == (4, HIDDEN)
    save_file({"a": t, "b": t.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="found: a, b"):
        load_soft_prompt(tmp_path / "two.safetensors")
    save_file({"prompt_embeddings": torch.randn(1, 4, HIDDEN)}, str(tmp_path / "3d.safetensors"))
    with pytest.raises(ValueError, match="2-D"):
        load_soft_prompt(tmp_path / "3d.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_soft_prompt(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="file not found"):
        load_soft_prompt(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_soft_prompt(tmp_path / "x.npy")


@pytest.mark.unit
def test_load_soft_prompt_torch_files(tmp_path):
    t = torch.randn(3, HIDDEN)
    torch.save(t, tmp_path / "plain.pt")
    assert torch.equal(load_soft_prompt(tmp_path / "plain.pt"), t)
    torch.save({"prompt_embeddings": t}, tmp_path / "peft.bin")
    assert torch.equal(load_soft_prompt(tmp_path / "peft.bin"), t)
    torch.save({"other": t}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected a tensor or a dict"):
        load_soft_prompt(tmp_path / "other.pt")


class _Payload:
    """Unpickling this would create a file: proof that the pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.unit
# torch warns about the foreign pickle this test feeds it on purpose
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_soft_prompt_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "pickle-ran"
    torch.save({"prompt_embeddings": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_soft_prompt(tmp_path / "evil.pt")
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match="weights_only"):
        load_soft_prompt(tmp_path / "evil.bin")
    assert not marker.exists()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    expert = make_expert(tmp_path_factory.mktemp("e2e"))
    code = run_train(expert, max_steps=2)
    return expert, code


@pytest.mark.trainer
def test_sigterm_stops_the_training_and_leaves_the_expert_folder_as_it_was(tmp_path):
    expert = make_expert(tmp_path)
    before = snapshot(expert)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "trainer", str(expert), "--max-steps", "100000"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        deadline = time.monotonic() + 180
        while not list(expert.glob(".trainer-staging-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # into the training
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: nothing written" in err
    assert snapshot(expert) == before and not list(expert.glob(".trainer-staging-*"))


@pytest.mark.trainer
def test_run_train_writes_adapter_soft_prompt_and_manifest(trained):
    expert, code = trained
    assert code == 0
    assert sorted(p.name for p in expert.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "datasets",
        "manifest.json",
        "soft_prompts",
    ]  # no staging folder or PEFT README left behind

    config = json.loads((expert / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == BASE

    weights = load_file(str(expert / "adapter_model.safetensors"))
    assert len(weights) == 30 * 2 * 2  # layers x modules x (A, B)
    assert all(k.startswith("base_model.model.model.layers.") for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)  # trained (B starts at 0)

    soft = load_file(str(expert / "soft_prompts" / "sp.safetensors"))
    assert list(soft) == ["prompt_embeddings"]
    assert soft["prompt_embeddings"].shape == (4, HIDDEN)
    assert soft["prompt_embeddings"].dtype == torch.float32

    manifest = json.loads((expert / "manifest.json").read_text())
    adapter = manifest["base_models"][0]["adapters"][0]
    data = (expert / "adapter_model.safetensors").read_bytes()
    assert adapter["sha256"] == hashlib.sha256(data).hexdigest()
    assert adapter["size_bytes"] == len(data)
    sp = manifest["soft_prompts"][0]
    assert sp["sha256"] == hashlib.sha256((expert / "soft_prompts" / "sp.safetensors").read_bytes()).hexdigest()
    # edited in place: key order and comment keys kept
    assert list(manifest)[:3] == ["schema_version", "name", "_comment"]
    assert list(adapter) == ["type", "r", "alpha", "dropout", "target_modules", "_note", "sha256", "size_bytes"]
    assert (expert / "manifest.json").read_text().startswith('{\n  "schema_version": "2.0",\n')


@pytest.mark.trainer
def test_reference_generation_uses_adapter_and_soft_prompt(trained):
    from trainer.reference import greedy_tokens, load_expert

    expert, code = trained
    assert code == 0
    messages = [{"role": "user", "content": "Say hi as JSON"}]
    full = load_expert(expert)
    assert full.soft_prompt is not None and full.soft_prompt.shape == (4, HIDDEN)
    tokens = greedy_tokens(full, messages, 4)
    assert 1 <= len(tokens) <= 4 and all(isinstance(t, int) for t in tokens)
    # the cached decoding loop agrees with recomputing the whole sequence every step
    model, embed = full.model, full.model.get_input_embeddings()
    from trainer.data import render_prompt

    ids = render_prompt(full.tokenizer, messages)
    with torch.no_grad():
        seq = list(ids)
        for t in tokens:
            e = torch.cat([full.soft_prompt[None], embed(torch.tensor([seq]))], dim=1)
            assert int(model(inputs_embeds=e).logits[0, -1].argmax()) == t
            seq.append(t)


@pytest.mark.trainer
def test_same_seed_reproduces_the_adapter(trained, tmp_path):
    expert, code = trained
    assert code == 0
    again = make_expert(tmp_path)
    assert run_train(again, max_steps=2) == 0
    first = load_file(str(expert / "adapter_model.safetensors"))
    second = load_file(str(again / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], atol=1e-6) for k in first)
    a = load_file(str(expert / "soft_prompts" / "sp.safetensors"))["prompt_embeddings"]
    b = load_file(str(again / "soft_prompts" / "sp.safetensors"))["prompt_embeddings"]
    assert torch.allclose(a, b, atol=1e-6)
