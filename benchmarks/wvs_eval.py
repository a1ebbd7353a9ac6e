"""Benchmark the WVS evaluation's two answer modes on a local model (default: ``local``).

Measures prompts/s (one prompt = one persona x one question; wall clock, the
model already loaded, response cache off) for:

* ``generate``: generate-and-parse (greedy, ``--max-tokens`` tokens), personas
  in flight together, as ``clca wvs --answer generate`` runs them;
* ``generate-serial``: the same, one prompt at a time (a plain loop);
* ``choices``: the K options scored, personas in flight together, so each
  question is one batched scoring pass over the personas;

and the agreement of ``choices`` with ``generate`` where the generated answer
parses. With ``--model hf/Qwen/Qwen2.5-0.5B-Instruct`` on a GPU and
``--personas 1000 --questions 44`` it measures the paper's scale.

Usage::

    .venv/bin/python benchmarks/wvs_eval.py --personas 16 --questions 6
    .venv/bin/python benchmarks/wvs_eval.py --model "hf/Qwen/Qwen2.5-0.5B-Instruct?max_batch=64" \
        --personas 1000 --questions 44 --concurrency 256 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path


def _with(model: str, opts: str) -> str:
    return f"{model}{'&' if '?' in model else '?'}{opts}" if opts else model


async def _mode(backend, config, people, questions, concurrency: int):
    from scene_sim.studies.clca import wvs

    semaphore = asyncio.Semaphore(concurrency)

    async def one(person):
        async with semaphore:
            return await wvs._model_answers(backend, config, person, questions)

    t0 = time.perf_counter()
    batches = await asyncio.gather(*(one(p) for p in people))
    return time.perf_counter() - t0, [a for b in batches for a in b]


async def _timed(model: str, mode_cfg, people, questions, concurrency: int, warm_person):
    """One mode on a backend of its own: loaded and warmed on a persona outside the timed set.

    A fresh backend per mode keeps one mode's prompts out of the other's prefix cache
    (both modes send the same prompts, so the second would otherwise skip its prefill).
    """
    from scene_sim.context import RunContext

    context = RunContext(cache_mode="off")
    try:
        backend = context.backend(model)
        await _mode(backend, mode_cfg, [warm_person], questions[:1], 1)
        return await _mode(backend, mode_cfg, people, questions, concurrency)
    finally:
        await context.aclose()


async def run(args: argparse.Namespace) -> dict:
    from scene_sim.studies.clca import wvs

    tmp = Path(tempfile.mkdtemp())
    survey = wvs.load_survey(wvs.write_synthetic_survey(tmp / "s.csv", ("DEU",), n=max(args.personas + 1, 20)), "DEU")
    *people, warm = wvs.sample_respondents(survey, args.personas + 1, seed=0)
    questions = list(wvs.load_questions()[: args.questions])
    model = _with(args.model, args.options)
    base = {"survey": "x", "country": "DEU", "subject": model, "personas": args.personas, "out": str(tmp)}
    out: dict = {"model": model, "personas": args.personas, "questions": len(questions)}
    n = args.personas * len(questions)
    gen_cfg = wvs.WVSConfig(**base, answer_mode="generate", max_tokens=args.max_tokens)
    cho_cfg = wvs.WVSConfig(**base, answer_mode="choices")
    t_cho, chosen = await _timed(model, cho_cfg, people, questions, args.concurrency, warm)
    t_gen, generated = await _timed(model, gen_cfg, people, questions, args.concurrency, warm)
    out["choices_prompts_per_s"] = n / t_cho
    out["generate_prompts_per_s"] = n / t_gen
    if args.serial:
        serial_people = people[: max(1, args.personas // 4)]
        t_ser, _ = await _timed(model, gen_cfg, serial_people, questions, 1, warm)
        out["generate_serial_prompts_per_s"] = len(serial_people) * len(questions) / t_ser
    valid = [(g, c) for g, c in zip(generated, chosen, strict=True) if g.value is not None]
    out["generate_valid_share"] = len(valid) / len(generated)
    out["agree_where_valid"] = sum(g.value == c.value for g, c in valid) / len(valid) if valid else None
    out["speedup_choices_vs_generate"] = out["choices_prompts_per_s"] / out["generate_prompts_per_s"]
    if args.serial:
        out["speedup_choices_vs_generate_serial"] = out["choices_prompts_per_s"] / out["generate_serial_prompts_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="local")
    parser.add_argument(
        "--options",
        default="repetition_penalty=1&max_batch=32&prefix_cache_mb=512",
        help=(
            "model-string options (default: no repetition penalty, so both modes decode the same model; "
            "a prefix cache that holds every persona in flight, so each persona's system prompt runs once)"
        ),
    )
    parser.add_argument("--personas", type=int, default=16)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serial", action="store_true", help="also time generate-and-parse one prompt at a time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for key, value in result.items():
        print(f"{key:38s} {value:.3f}" if isinstance(value, float) else f"{key:38s} {value}")


if __name__ == "__main__":
    main()
