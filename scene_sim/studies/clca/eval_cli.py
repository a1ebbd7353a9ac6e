"""CLCA commands (registered by :mod:`scene_sim.studies.clca.cli`): ``train``, ``wvs``, ``evaluate``.

Heavy work (torch, peft, the backends) is imported inside the handlers, so
``scene-sim --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

from scene_sim.plugins import CommandGroup, add_cache_argument

__all__ = ["register"]


def _wvs(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.wvs import WVSConfig, run_wvs

    result = run_wvs(
        WVSConfig(
            survey=args.survey,
            country=args.country,
            subject=args.subject,
            personas=args.personas,
            out=args.out,
            seed=args.seed,
            prompting=args.prompting,
            answer_mode=args.answer,
            epsilon=args.epsilon,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
            cache=args.cache,
            quiet=args.quiet,
            plots=not args.no_plots,
        )
    )

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    print(
        f"{result['subject']} on {result['country']} ({result['prompting']}, {result['personas']} personas): "
        f"KL {fmt(result['kl'])}  JS {fmt(result['js'])}  accuracy {fmt(result['accuracy'])}  "
        f"safeguards {result['safeguard_rate']:.2%}"
    )
    print(f"wrote {args.out}/wvs_metrics.json, answers.csv, report.md")
    return 0


def _train(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.train import TrainConfig, train_adapters

    cards = train_adapters(
        TrainConfig(
            data=args.data,
            model=args.model,
            out=args.out,
            max_steps=args.max_steps,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            r=args.r,
            alpha=args.alpha,
            dropout=args.dropout,
            target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
            max_length=args.max_length,
            adapter=args.adapter,
            cultures=tuple(c.strip() for c in args.cultures.split(",") if c.strip()) if args.cultures else (),
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
            seed=args.seed,
            save_steps=args.save_steps,
            quiet=args.quiet,
        )
    )
    for card in cards:
        print(
            f"adapter {card['adapter_dir']}: {card['steps']} steps, loss {card['first_loss']:.4f} -> "
            f"{card['final_loss']:.4f}, {card['tokens_per_s']:.0f} tokens/s; load it as {card['load_as']}"
        )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from scene_sim.studies.clca.evaluate import run_spec

    summary = run_spec(args.spec, args.out, cache=args.cache, quiet=args.quiet)
    print(json.dumps(summary["comparison"], indent=1))
    print(f"wrote {args.out}/comparison.json and comparison.md", file=sys.stderr)
    return 0


def register(group: CommandGroup) -> None:
    """Add these commands to ``group``."""
    p = group.add("wvs", _wvs, help="World Values Survey (wave 7) evaluation of a model (seed 004 section 5)")
    p.add_argument("--survey", required=True, help="the WVS-7 CSV export (numeric codes)")
    p.add_argument("--country", required=True, help="ISO alpha-3 code as in B_COUNTRY_ALPHA (GBR, CHN, DEU, ...)")
    p.add_argument(
        "--subject", required=True, help="model string, or scripted/oracle|scripted/first-option|scripted/uniform"
    )
    p.add_argument("--personas", type=int, required=True, help="respondents sampled without replacement")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--prompting", default="persona", choices=("persona", "cultural"))
    p.add_argument(
        "--answer",
        default="generate",
        choices=("generate", "choices"),
        help="generate and parse an integer (the paper; a non-integer is a safeguard) or score the K options",
    )
    p.add_argument("--epsilon", type=float, default=1e-6, help="KL smoothing (default 1e-6)")
    p.add_argument("--max-tokens", type=int, default=8, help="output tokens in generate mode (default 8)")
    p.add_argument("--concurrency", type=int, default=32, help="personas in flight (default 32)")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (report.md and the metrics stay)")
    p.add_argument("--out", required=True, help="output folder")
    add_cache_argument(p)

    t = group.add("train", _train, help="LoRA fine-tuning on train.jsonl (seed 004 section 4.2, Table 14 defaults)")
    t.add_argument("--data", required=True, help="train.jsonl (the contract's conversational format)")
    t.add_argument("--model", required=True, help="hf/ID_OR_PATH or local")
    t.add_argument("--out", required=True, help="adapter folder (per-culture: one sub-folder per culture)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps")
    t.add_argument("--epochs", type=float, default=None, help="default per family: Llama 3, Qwen 1, Mistral 3")
    t.add_argument("--lr", type=float, default=None, help="default per family: Llama 1e-4, Qwen 1e-4, Mistral 5e-5")
    t.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    t.add_argument("--r", type=int, default=4, help="LoRA rank (default 4)")
    t.add_argument("--alpha", type=float, default=0.1, help="LoRA alpha (default 0.1, as printed in Table 14)")
    t.add_argument("--dropout", type=float, default=0.5, help="LoRA dropout (default 0.5)")
    t.add_argument("--target-modules", default="q_proj,v_proj", help="default q_proj,v_proj")
    t.add_argument("--max-length", type=int, default=2048, help="tokens per example (longer ones are cut)")
    t.add_argument(
        "--adapter", default="joint", choices=("joint", "per-culture"), help="one adapter or one per culture"
    )
    t.add_argument("--cultures", default="", help="train only on these cultures (comma-separated)")
    t.add_argument("--tasks", default="conversation,intent", help="tasks to train on (default both)")
    t.add_argument(
        "--save-steps",
        type=int,
        default=50,
        help="checkpoint every N steps (default 50); a re-run continues from the last one",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no per-step progress lines")

    e = group.add("evaluate", _evaluate, help="experiment spec: train -> WVS of base and adapted model -> compare")
    e.add_argument("spec", help="SPEC.toml (see experiments/clca/train_eval_smoke.toml)")
    e.add_argument("--out", required=True, help="output folder (re-running resumes)")
    e.add_argument("--quiet", action="store_true")
    add_cache_argument(e)
