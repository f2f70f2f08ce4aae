"""`expert eval EXPERT_DIR`: an expert's test cases through the real gateway and engine,
for four variants of the same expert, side by side:

    base                      the base model alone
    lora                      the expert's adapter, no soft prompt, no grammar
    lora+soft_prompt          adapter and soft prompt, no grammar
    lora+soft_prompt+grammar  the expert as its manifest serves it

Test cases: `evaluation.test_cases` (a JSONL path or an inline list) or else
`training.dataset.test_path`; rows are `{"messages": [..., {"role": "assistant", "content": target}]}`
or `{"prompt", "completion"}`. An output is valid when it parses as JSON (for experts whose
manifest asks for JSON) or is non-empty; it matches when it equals the target (as JSON
values when both parse, else as stripped text).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def load_cases(expert_dir: Path, manifest: Any) -> list[tuple[list[dict[str, str]], str]]:
    source = manifest.evaluation.test_cases if manifest.evaluation else None
    if source is None and manifest.training and manifest.training.dataset:
        source = manifest.training.dataset.test_path
    if source is None:
        raise ValueError("no test cases: set evaluation.test_cases or training.dataset.test_path")
    if isinstance(source, list):
        rows = source
    else:
        from server.manifest.artifacts import inside

        path = inside(expert_dir, source)
        if path is None or not path.is_file():
            raise ValueError(f"test cases file {source!r} not found inside the expert folder")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cases = []
    for i, row in enumerate(rows, 1):
        if "messages" in row:
            msgs = list(row["messages"])
            if not msgs or msgs[-1].get("role") != "assistant":
                raise ValueError(f"test case {i}: the last message must be the assistant's target")
            cases.append((msgs[:-1], msgs[-1]["content"]))
        elif "prompt" in row and "completion" in row:
            cases.append(([{"role": "user", "content": row["prompt"]}], row["completion"]))
        else:
            raise ValueError(f"test case {i}: expected 'messages' or 'prompt' + 'completion'")
    return cases


def score(output: str, target: str, wants_json: bool) -> tuple[bool, bool]:
    try:
        parsed_out = json.loads(output)
        out_ok = True
    except ValueError:
        parsed_out, out_ok = None, False
    valid = out_ok if wants_json else bool(output.strip())
    try:
        exact = out_ok and parsed_out == json.loads(target)
    except ValueError:
        exact = output.strip() == target.strip()
    return valid, exact


def variants(has_soft_prompt: bool) -> list[tuple[str, dict[str, bool]]]:
    rows = [
        ("base", {"expert": False, "soft": False, "grammar": False}),
        ("lora", {"expert": True, "soft": False, "grammar": False}),
    ]
    if has_soft_prompt:
        rows += [
            ("lora+soft_prompt", {"expert": True, "soft": True, "grammar": False}),
            ("lora+soft_prompt+grammar", {"expert": True, "soft": True, "grammar": True}),
        ]
    else:
        rows += [("lora+grammar", {"expert": True, "soft": False, "grammar": True})]
    return rows


def request_body(spec: dict[str, bool], expert: str, base: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": expert if spec["expert"] else base, "messages": messages}
    if spec["expert"] and not spec["soft"]:
        body["soft_prompt"] = "none"
    if not spec["grammar"]:
        body["response_format"] = {"type": "text"}
    return body


async def evaluate(expert_dir: Path, limit: int | None = None, concurrency: int = 16) -> dict[str, Any]:
    import httpx
    from asgi_lifespan import LifespanManager

    from server.api.app import create_app
    from server.manifest.schema import load_manifest
    from server.settings import Settings

    manifest = load_manifest(expert_dir)
    cases = load_cases(expert_dir, manifest)[: limit or None]
    wants_json = (
        bool(manifest.decoding.validation and "json" in manifest.decoding.validation.lower())
        or (manifest.decoding.grammar_type or "").lower() == "json"
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / manifest.name).symlink_to(expert_dir.resolve(), target_is_directory=True)
        settings = Settings(experts_dir=Path(tmp), dtype="float32")
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=600, shutdown_timeout=60):
            gw = app.state.gateway
            while not gw.ready and not gw.startup_error:
                await asyncio.sleep(0.5)
            if gw.startup_error:
                raise RuntimeError(gw.startup_error)
            if gw.registry.get(manifest.name) is None:
                raise RuntimeError(f"expert not loaded: {gw.registry.not_loaded.get(manifest.name)}")
            base = settings.served_model_name
            gate = asyncio.Semaphore(concurrency)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://eval", timeout=600) as client:

                async def run(spec: dict[str, bool], messages: list[dict[str, str]]) -> str:
                    async with gate:
                        r = await client.post(
                            "/v1/chat/completions", json=request_body(spec, manifest.name, base, messages)
                        )
                    r.raise_for_status()
                    return r.json()["choices"][0]["message"]["content"]

                results: dict[str, Any] = {}
                for name, spec in variants(bool(manifest.soft_prompts)):
                    outputs = await asyncio.gather(*(run(spec, m) for m, _ in cases))
                    scored = [score(o, t, wants_json) for o, (_, t) in zip(outputs, cases)]
                    results[name] = {
                        "n": len(cases),
                        "valid": sum(v for v, _ in scored),
                        "exact": sum(e for _, e in scored),
                        "examples": [{"output": o, "target": t} for o, (_, t) in list(zip(outputs, cases))[:3]],
                    }
    return {"expert": manifest.name, "version": manifest.version, "cases": len(cases), "variants": results}


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['expert']} {report['version']}: {report['cases']} test cases",
        "",
        "| variant | valid output | exact match |",
        "|---|---|---|",
    ]
    for name, r in report["variants"].items():
        n = r["n"] or 1
        lines.append(
            f"| {name} | {r['valid']}/{r['n']} ({100 * r['valid'] / n:.0f}%) "
            f"| {r['exact']}/{r['n']} ({100 * r['exact'] / n:.0f}%) |"
        )
    return "\n".join(lines)


def run_eval(expert_dir: Path, *, as_json: bool = False, limit: int | None = None) -> int:
    try:
        report = asyncio.run(evaluate(expert_dir, limit))
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        for r in report["variants"].values():
            r.pop("examples", None)
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report))
    return 0
