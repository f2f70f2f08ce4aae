"""`expert eval EXPERT_DIR`: an expert's test cases through the real gateway and engine, for
every variant its files allow, side by side, with 95% intervals and paired comparisons.

    base                      the base model alone
    base+grammar              the base model with the expert's grammar
    soft_prompt               the soft prompt on the frozen base (an expert with no adapter)
    soft_prompt+grammar       ... with the grammar
    lora                      the expert's adapter, no soft prompt, no grammar
    lora+grammar              the adapter and the grammar (for an expert with a soft prompt: only
                              when named by --variants)
    lora+soft_prompt          adapter and soft prompt, no grammar
    lora+soft_prompt+grammar  the expert as its manifest serves it

Every variant decodes with the expert's own manifest values (temperature, top_p, stops, seed,
max_tokens, ...): the base rows are served as a copy of the expert with its adapters and soft
prompts removed, so the comparison is between models, not between decoding settings.

Test cases: `evaluation.test_cases` (a JSONL path or an inline list) or else
`training.dataset.test_path`; `--cases FILE` names another JSONL file inside the expert folder
instead (a dev split, say, to choose between candidates without touching the test split). Rows
are `{"messages": [..., {"role": "assistant", "content": target}]}` or `{"prompt", "completion"}`.
The metric is `evaluation.metric`:
- `exact_match` (default): the output equals the target (as JSON values when both parse, else as
  stripped text); it is valid when it parses as JSON (experts that ask for JSON) or is non-empty;
- `sql_execution`: the output, run as a query on `evaluation.database` (read-only), returns the
  rows the target query returns (server/commands/sql_scoring.py); it is valid when it runs.
Statistics: server/commands/eval_stats.py.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from server.commands.eval_stats import mcnemar_exact, paired_difference, score_interval

BASE_SUFFIX = "-eval-base"


@dataclass(frozen=True)
class Variant:
    name: str
    expert: bool  # the expert itself (else its copy without adapters and soft prompts)
    soft_prompt: bool
    grammar: bool
    default: bool = True  # run when no --variants are named


def cases_source(manifest: Any, cases_file: str | None = None) -> Any:
    """Where the test cases come from: `cases_file` when given, else `evaluation.test_cases` (a
    path or an inline list), else `training.dataset.test_path`."""
    if cases_file is not None:
        return cases_file
    source = manifest.evaluation.test_cases if manifest.evaluation else None
    if source is None and manifest.training and manifest.training.dataset:
        source = manifest.training.dataset.test_path
    if source is None:
        raise ValueError("no test cases: set evaluation.test_cases or training.dataset.test_path")
    return source


def load_cases(expert_dir: Path, source: Any) -> list[tuple[list[dict[str, str]], str]]:
    """The (messages, target) pairs of `source`, as `cases_source` gives it: an inline list, or
    a JSONL path read only from inside `expert_dir`."""
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
    """(valid, correct) of one answer under the exact-match metric."""
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


def variants(*, adapter: bool, soft_prompt: bool, grammar: bool) -> list[Variant]:
    """The variants an expert's files allow, in the order of the report."""
    rows = [Variant("base", False, False, False)]
    if grammar:
        rows.append(Variant("base+grammar", False, False, True))
    if adapter:
        rows.append(Variant("lora", True, False, False))
        if soft_prompt:
            rows.append(Variant("lora+soft_prompt", True, True, False))
        if grammar:
            # an expert with a soft prompt: the adapter and grammar without it, on request (--variants)
            rows.append(Variant("lora+grammar", True, False, True, default=not soft_prompt))
            if soft_prompt:
                rows.append(Variant("lora+soft_prompt+grammar", True, True, True))
    elif soft_prompt:
        rows.append(Variant("soft_prompt", True, True, False))
        if grammar:
            rows.append(Variant("soft_prompt+grammar", True, True, True))
    return rows


def select(rows: list[Variant], names: Sequence[str] | None) -> list[Variant]:
    """`rows` restricted to `names` (the default ones when None), in the report's order; a name that is not
    one of `rows` is an error that lists them."""
    if not names:
        return [r for r in rows if r.default]
    known = [r.name for r in rows]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, unknown))}; this expert has: {', '.join(known)}")
    return [r for r in rows if r.name in names]


def request_body(variant: Variant, expert: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": expert if variant.expert else expert + BASE_SUFFIX, "messages": messages}
    if variant.expert and not variant.soft_prompt:
        body["soft_prompt"] = "none"
    if not variant.grammar:
        body["response_format"] = {"type": "text"}
    return body


def base_copy(expert_dir: Path, raw: dict[str, Any], target: Path) -> None:
    """The expert without its adapters and soft prompts (same decoding, same grammar file)."""
    data = json.loads(json.dumps(raw))
    data["name"] = target.name
    data.pop("integrity", None)
    for key in ("adapters",):
        data.pop(key, None)
    for base in data.get("base_models") or []:
        base["adapters"] = []
    data["soft_prompts"] = []
    target.mkdir()
    (target / "manifest.json").write_text(json.dumps(data, indent=2))
    grammar_file = ((data.get("training") or {}).get("decoding") or {}).get("grammar_file")
    for rel in [grammar_file, "grammar.gbnf"]:
        if rel and (expert_dir / rel).is_file() and not Path(rel).is_absolute() and ".." not in Path(rel).parts:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(expert_dir / rel, target / rel)


def make_scorer(
    expert_dir: Path, manifest: Any
) -> tuple[str, Callable[[str, str], tuple[bool, bool]], Callable[[], None]]:
    """The metric's name, its (output, target) -> (valid, correct) function, and a closer."""
    ev = manifest.evaluation
    if ev is not None and ev.metric == "sql_execution":
        from server.commands.sql_scoring import SqlScorer
        from server.manifest.artifacts import inside

        database = inside(expert_dir, ev.database or "")
        if database is None or not database.is_file():
            raise ValueError(f"evaluation.database {ev.database!r} not found inside the expert folder")
        scorer = SqlScorer(database)
        return "sql_execution", scorer.score, scorer.close
    wants_json = bool(manifest.decoding.validation and "json" in manifest.decoding.validation.lower()) or (
        (manifest.decoding.grammar_type or "").lower() == "json"
    )
    return "exact_match", lambda output, target: score(output, target, wants_json), lambda: None


def summarise(outcomes: dict[str, list[tuple[bool, bool]]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    table: dict[str, Any] = {}
    for name, scored in outcomes.items():
        correct = [c for _, c in scored]
        n = len(scored)
        lo, hi = score_interval(correct)
        table[name] = {
            "n": n,
            "valid": sum(v for v, _ in scored),
            "correct": sum(correct),
            "score": sum(correct) / n if n else 0.0,
            "ci95": [lo, hi],
        }
    comparisons = []
    for a, b in combinations(outcomes, 2):
        ca, cb = [c for _, c in outcomes[a]], [c for _, c in outcomes[b]]
        diff, (lo, hi) = paired_difference(ca, cb)
        comparisons.append({"a": a, "b": b, "difference": diff, "ci95": [lo, hi], "p_value": mcnemar_exact(ca, cb)})
    return table, comparisons


async def evaluate(
    expert_dir: Path,
    limit: int | None = None,
    concurrency: int = 16,
    only: Sequence[str] | None = None,
    cases_file: str | None = None,
) -> dict[str, Any]:
    import httpx
    from asgi_lifespan import LifespanManager

    from server.api.app import create_app
    from server.manifest.schema import MANIFEST_FILENAME, load_manifest, read_manifest_json
    from server.settings import Settings

    expert_dir = expert_dir.resolve()
    manifest = load_manifest(expert_dir)
    source = cases_source(manifest, cases_file)
    cases = load_cases(expert_dir, source)[: limit or None]
    rows = select(
        variants(
            adapter=bool(manifest.bases()[0][1]),
            soft_prompt=bool(manifest.soft_prompts),
            grammar=bool(manifest.decoding.use_grammar),
        ),
        only,
    )
    metric, scorer, close = make_scorer(expert_dir, manifest)
    outcomes: dict[str, list[tuple[bool, bool]]] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    failures: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(expert_dir, Path(tmp) / manifest.name, symlinks=True)
            base_copy(
                expert_dir,
                read_manifest_json(expert_dir / MANIFEST_FILENAME),
                Path(tmp) / (manifest.name + BASE_SUFFIX),
            )
            settings = Settings(experts_dir=Path(tmp), dtype="float32")
            app = create_app(settings)
            async with LifespanManager(app, startup_timeout=600, shutdown_timeout=60):
                state = await app.state.service.started()  # StartupFailed (a RuntimeError) when it did not start
                for name in (manifest.name, manifest.name + BASE_SUFFIX):
                    if state.registry.get(name) is None:
                        raise RuntimeError(f"expert {name} not loaded: {state.registry.not_loaded.get(name)}")
                gate = asyncio.Semaphore(concurrency)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://eval", timeout=600) as client:

                    async def run(variant: Variant, messages: list[dict[str, str]]) -> str:
                        async with gate:
                            r = await client.post(
                                "/v1/chat/completions", json=request_body(variant, manifest.name, messages)
                            )
                        if r.status_code != 200:
                            raise RuntimeError(f"{variant.name}: the gateway answered {r.status_code}: {r.text[:300]}")
                        return str(r.json()["choices"][0]["message"]["content"] or "")

                    for i, variant in enumerate(rows, start=1):
                        started = time.perf_counter()
                        outputs = await asyncio.gather(*(run(variant, m) for m, _ in cases))
                        outcomes[variant.name] = [scorer(o, t) for o, (_, t) in zip(outputs, cases, strict=True)]
                        correct = sum(c for _, c in outcomes[variant.name])
                        print(
                            f"eval: variant {i}/{len(rows)} {variant.name}: {correct}/{len(cases)} correct "
                            f"in {time.perf_counter() - started:.0f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                        examples[variant.name] = [
                            {"output": o, "target": t} for o, (_, t) in zip(outputs[:3], cases[:3], strict=True)
                        ]
                        failures.extend(
                            {"variant": variant.name, "case": n, "input": m[-1]["content"], "output": o, "target": t}
                            for n, (o, (m, t), (_, ok)) in enumerate(
                                zip(outputs, cases, outcomes[variant.name], strict=True), start=1
                            )
                            if not ok
                        )
    finally:
        close()
    table, comparisons = summarise(outcomes)
    for name, ex in examples.items():
        table[name]["examples"] = ex
    return {
        "expert": manifest.name,
        "version": manifest.version,
        "cases": len(cases),
        "cases_file": source if isinstance(source, str) else None,  # None: the manifest's inline list
        "metric": metric,
        "variants": table,
        "comparisons": comparisons,
        "failures": failures,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['expert']} {report['version']}: {report['cases']} test cases"
        + (f" from {json.dumps(report['cases_file'])}" if report.get("cases_file") else "")
        + f", metric {report['metric']}",
        "",
        "| variant | valid | correct | score % (95% CI) |",
        "|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        lo, hi = r["ci95"]
        lines.append(
            f"| {name} | {r['valid']}/{r['n']} | {r['correct']}/{r['n']} | {_pct(r['score'])} ({_pct(lo)}–{_pct(hi)}) |"
        )
    if report["comparisons"]:  # one variant has nothing to be compared with
        lines += ["", "| a → b | difference, points (95% CI) | McNemar p |", "|---|---|---|"]
    for c in report["comparisons"]:
        lo, hi = c["ci95"]
        lines.append(
            f"| {c['a']} → {c['b']} | {_pct(c['difference'])} ({_pct(lo)} to {_pct(hi)}) | {c['p_value']:.3g} |"
        )
    return "\n".join(lines)


def write_failures(path: Path, failures: list[dict[str, Any]]) -> None:
    """One JSON line per case a variant got wrong: variant, case number (1-based), last user message,
    the output and the target."""
    with path.open("w", encoding="utf-8") as fh:
        for row in failures:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def stop_child_processes(grace_s: float = 10.0) -> None:
    """Stop what is left of the engine's processes after an interruption. The engine's own shutdown
    can be cut short by it, and a child process still running keeps this one from exiting."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(1.0)


def run_eval(
    expert_dir: Path,
    *,
    as_json: bool = False,
    limit: int | None = None,
    only: Sequence[str] | None = None,
    failures: Path | None = None,
    cases_file: str | None = None,
) -> int:
    if failures is not None and not failures.parent.is_dir():
        print(f"error: --failures: no folder {str(failures.parent)!r}", file=sys.stderr)
        return 1
    # SIGTERM ends the evaluation as Ctrl-C does: the engine is shut down on the way out (its
    # processes would otherwise outlive this one, busy, with no parent)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = asyncio.run(evaluate(expert_dir, limit, only=only, cases_file=cases_file))
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("eval: interrupted", file=sys.stderr)
        stop_child_processes()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    wrong = report.pop("failures")
    if failures is not None:
        try:
            write_failures(failures, wrong)
        except OSError as exc:
            print(f"error: --failures: {exc}", file=sys.stderr)
            return 1
        print(f"eval: {len(wrong)} failing case(s) written to {failures}", file=sys.stderr)
    if as_json:
        for r in report["variants"].values():
            r.pop("examples", None)
        print(json.dumps(report, indent=2))
    else:
        print(render_table(report))
    return 0
