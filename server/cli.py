"""The `expert` command: serve, validate, schema, model, train, eval, package, install, convert."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from server.settings import Settings, detect_platform


def _settings(**overrides: Any) -> Settings:
    """The settings from the environment and the command's flags; an invalid one ends the command with
    its variable's name and what is wrong (exit status 2), not a traceback."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"EXPERT_{str(e['loc'][0]).upper() if e['loc'] else '?'}: {e['msg']}" for e in exc.errors()
        )
        print(f"expert: invalid setting: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from server.engine.vllm_engine import known_attention_backends, supported_kv_cache_dtypes
    from server.experts.base_model import base_info
    from server.manifest.validate import render_json, render_text, validate_path

    settings = _settings(model=args.model)
    base = base_info(settings)
    defaults = settings.engine_defaults()
    platform = detect_platform(settings)
    result = validate_path(
        Path(args.path),
        base,
        platform=platform,
        engine_defaults=defaults,
        max_lora_rank=settings.max_lora_rank,
        known_backends=known_attention_backends(),
        kv_cache_dtypes=supported_kv_cache_dtypes(platform),
    )
    if args.prove and base is not None and base.path is not None:
        from server.commands.prove import prove

        result = prove(result, settings, str(base.path))
    print(render_json(result) if args.json else render_text(result, args.strict))
    return result.exit_code(args.strict)


def cmd_schema(args: argparse.Namespace) -> int:
    from server.manifest.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from server.manifest import embedded

    settings = _settings()
    try:
        path = embedded.prepare(settings.cache_dir, verify_hashes=args.action == "prepare")
    except embedded.EmbeddedModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from server.commands.serve import serve

    settings = _settings(
        experts_dir=args.experts_dir,
        model=args.model,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        watch=args.watch or None,
    )
    return serve(settings)


def run_trainer(argv: list[str]) -> int:
    """`expert train ARGS` is `python -m trainer ARGS`: the trainer is its own program (the server
    never imports it), installed in the same environment. This process becomes the trainer (exec),
    so a signal sent to `expert train` (SIGTERM from a supervisor or `timeout`) reaches the
    training itself instead of leaving it running, orphaned, in the expert folder."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "trainer", *argv])
    return 1  # not reached: execv returns only by raising


def cmd_eval(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from server.commands.evaluate import run_eval

    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    return run_eval(
        Path(args.expert_dir),
        as_json=args.json,
        limit=args.limit,
        only=only,
        failures=args.failures,
        cases_file=args.cases,
    )


def cmd_package(args: argparse.Namespace) -> int:
    from server.commands.package import run_package

    return run_package(Path(args.expert_dir), args.out, args.sign_key)


def cmd_install(args: argparse.Namespace) -> int:
    from server.commands.package import run_install

    overrides: dict[str, Any] = {"experts_dir": args.experts_dir}
    if args.trusted_key:
        overrides["trusted_keys"] = args.trusted_key
    return run_install(Path(args.package), _settings(**overrides))


def cmd_convert(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from server.commands.convert import run_convert

    return run_convert(
        Path(args.dora_dir),
        Path(args.out_dir),
        _settings(model=args.model),
        rank=args.rank,
        max_error=args.max_error,
        prompts=args.prompts,
        tokens=args.tokens,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve the experts over the OpenAI API")
    p.add_argument("--experts-dir", type=Path, help="folder of expert folders (default: ./experts)")
    p.add_argument(
        "--model", help="base model: Hugging Face folder or id (default: the embedded SmolLM2-135M-Instruct)"
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (default 8000)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--watch", action="store_true", help="reload an expert when its folder changes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("validate", help="validate an expert folder or manifest; print every field's fate")
    p.add_argument("path", help="expert folder or manifest file")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--strict", action="store_true", help="exit 2 for any refused field")
    p.add_argument("--model", help="base model to check against (default: the embedded model)")
    p.add_argument(
        "--prove", action="store_true", help="start the engine and probe each behavioural claim (evidence per field)"
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the manifest's JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("model", help="the embedded default model")
    p.add_argument(
        "action",
        choices=["path", "prepare"],
        help="path: print its folder (preparing it if needed); prepare: make it and verify every file's sha256",
    )
    p.set_defaults(func=cmd_model)

    # listed for `expert --help`; its arguments (and its --help) are the trainer's own: see main()
    sub.add_parser("train", help="train an expert's LoRA adapter and soft prompt (python -m trainer)", add_help=False)

    p = sub.add_parser("eval", help="run an expert's test cases through the engine, per variant")
    p.add_argument("expert_dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, help="at most this many test cases")
    p.add_argument(
        "--variants", help="comma-separated variants to run (default: every variant the expert's files allow)"
    )
    p.add_argument("--failures", type=Path, help="write every case a variant got wrong to this file (JSON lines)")
    p.add_argument(
        "--cases",
        metavar="FILE",
        help="JSONL test cases inside the expert folder, instead of the manifest's (e.g. datasets/dev.jsonl)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("package", help="write an expert folder as a .expert package (+ .sha256 sidecar)")
    p.add_argument("expert_dir")
    p.add_argument("--out", type=Path, help="folder to write the package into (default: the current folder)")
    p.add_argument(
        "--sign-key", type=Path, help="ed25519 private key (PEM, or 32-byte seed in base64/hex) to sign with"
    )
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("install", help="check and unpack a .expert package into the experts folder")
    p.add_argument("package")
    p.add_argument("--experts-dir", type=Path, help="folder of expert folders (default: ./experts)")
    p.add_argument(
        "--trusted-key",
        action="append",
        help="ed25519 public key (ed25519:<base64>) trusted to sign packages; repeatable (default: EXPERT_TRUSTED_KEYS)",
    )
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("convert", help="convert a DoRA expert to a plain LoRA one, with a fidelity report")
    p.add_argument("dora_dir", help="expert folder with a PEFT DoRA adapter")
    p.add_argument("out_dir", help="folder to write the converted expert into (must not exist)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rank", type=int, help="LoRA rank to keep (default: the DoRA adapter's r)")
    group.add_argument(
        "--max-error", type=float, help="smallest rank whose relative error is at most this in every module"
    )
    p.add_argument("--model", help="base model folder (default: the embedded model)")
    p.add_argument("--prompts", type=Path, help="JSON list of prompts for the agreement check (default: built in)")
    p.add_argument("--tokens", type=int, default=16, help="greedy tokens per prompt in the agreement check")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    import os

    # stdout is for results (tables, JSON); vLLM's logs, in every process it starts, go to stderr
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return run_trainer(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
