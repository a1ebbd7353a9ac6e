"""``clca evaluate SPEC.toml``: train an adapter, evaluate base and adapted model on the WVS, compare.

The spec (see ``experiments/clca/train_eval_smoke.toml``)::

    name = "clca-smoke"
    seed = 0

    [train]                      # the clca train options (TrainConfig fields)
    data = "synthetic"           # a train.jsonl path, or "synthetic": a made-up set (format check only)
    model = "local"
    max_steps = 3

    [wvs]
    survey = "synthetic"         # a WVS-7 CSV export, or "synthetic": a made-up file in its format
    countries = ["DEU"]
    personas = 2
    answer = "choices"           # or "generate"
    baselines = ["persona", "cultural"]
    questions = []               # subset of the 44 for smoke runs; empty = all 44
    subject_options = ""         # extra model-string options, e.g. "max_batch=32"

It writes ``OUT/adapter/`` (the training run), ``OUT/wvs/<country>/<variant>/``
(one ``clca wvs`` run each: ``persona`` and ``cultural`` on the base model,
``clca`` = the adapter with the persona prompt, as in the paper) and
``OUT/comparison.json`` / ``comparison.md``. Each step is resumable, so
re-running the same spec into the same folder does only what is missing.
Relative paths are relative to the spec file.
"""

from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path
from typing import Any

from scene_sim.errors import SceneSimError

__all__ = ["run_spec", "synthetic_train_records"]

_TRAIN_KEYS = {
    "data",
    "model",
    "max_steps",
    "epochs",
    "lr",
    "batch_size",
    "grad_accum",
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "max_length",
    "adapter",
    "cultures",
    "tasks",
    "save_steps",
}
_WVS_KEYS = {
    "survey",
    "countries",
    "personas",
    "answer",
    "baselines",
    "questions",
    "subject_options",
    "epsilon",
    "max_tokens",
    "concurrency",
    "synthetic_respondents",
    "plots",
}


def synthetic_train_records(n_dialogues: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """A made-up ``train.jsonl`` in the contract's format (two perspectives + intents per dialogue).

    For smoke runs only: it exercises the format and the trainer, it teaches nothing about a culture.
    """
    rng = random.Random(seed)
    names = [("Li Wei", "Zhang Qi"), ("Anna Becker", "Jonas Weber"), ("Yuki Sato", "Kenji Ito")]
    out: list[dict[str, Any]] = []
    for d in range(n_dialogues):
        a, b = names[rng.randrange(len(names))]
        setting = f"Two neighbours meet in the stairwell (dialogue {d})."
        turns = [
            (a, f"Good evening, {b}."),
            (b, f"Good evening, {a}. How is your family?"),
            (a, "Very well, thank you."),
        ]
        for me in (a, b):
            other = b if me == a else a
            msgs = [{"role": "system", "content": f"{setting}\nYou are {me}. Your goal: greet {other} politely."}]
            msgs += [{"role": "assistant" if s == me else "user", "content": t} for s, t in turns]
            out.append({"messages": msgs, "task": "conversation", "dialogue_id": f"syn{d}", "perspective": me})
        for speaker, text in turns:
            out.append(
                {
                    "messages": [
                        {"role": "system", "content": setting},
                        {"role": "user", "content": f"{speaker}: {text}\nWhat is {speaker}'s intent?"},
                        {"role": "assistant", "content": "To greet the neighbour politely."},
                    ],
                    "task": "intent",
                    "dialogue_id": f"syn{d}",
                    "perspective": speaker,
                }
            )
    return out


def _load_spec(path: Path) -> dict[str, Any]:
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SceneSimError(f"{path}: spec not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SceneSimError(f"{path}: not valid TOML ({exc})") from None
    for section, keys in (("train", _TRAIN_KEYS), ("wvs", _WVS_KEYS)):
        if not isinstance(spec.get(section), dict):
            raise SceneSimError(f"{path}: needs a [{section}] table")
        unknown = sorted(set(spec[section]) - keys)
        if unknown:
            raise SceneSimError(f"{path}: unknown [{section}] key(s) {', '.join(unknown)}")
    return spec


def _path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _with_options(model: str, options: str) -> str:
    if not options:
        return model
    return f"{model}{'&' if '?' in model else '?'}{options}"


def run_spec(spec_path: str, out_dir: str, *, cache: str = "read-write", quiet: bool = False) -> dict[str, Any]:
    """Run the spec into ``out_dir``; returns ``{"comparison": ..., "runs": ...}``.

    Raises:
        SceneSimError: a bad spec or a failing step.

    """
    from scene_sim.rundir import atomic_write_text
    from scene_sim.studies.clca.train import TrainConfig, train_adapters
    from scene_sim.studies.clca.wvs import WVSConfig, run_wvs, write_synthetic_survey

    path = Path(spec_path)
    spec = _load_spec(path)
    base_dir = path.parent
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(spec.get("seed", 0))
    train = dict(spec["train"])
    wvs = dict(spec["wvs"])
    countries = [str(c).upper() for c in wvs.get("countries", [])]
    if not countries:
        raise SceneSimError(f"{path}: [wvs] countries must list at least one ISO alpha-3 code")

    data = str(train.pop("data", ""))
    if data == "synthetic":
        data_path = out / "synthetic_train.jsonl"
        if not data_path.exists():
            records = synthetic_train_records(seed=seed)
            atomic_write_text(data_path, "".join(json.dumps(r) + "\n" for r in records))
        data = str(data_path)
    elif data:
        data = _path(data, base_dir)
    else:
        raise SceneSimError(f'{path}: [train] needs data (a train.jsonl path or "synthetic")')
    survey = str(wvs.get("survey", ""))
    if survey == "synthetic":
        survey_path = out / "synthetic_survey.csv"
        if not survey_path.exists():
            write_synthetic_survey(survey_path, countries, n=int(wvs.get("synthetic_respondents", 60)), seed=seed)
        survey = str(survey_path)
    elif survey:
        survey = _path(survey, base_dir)
    else:
        raise SceneSimError(f'{path}: [wvs] needs survey (a WVS-7 CSV export or "synthetic")')
    model = str(train.get("model", "local"))
    for key in ("target_modules", "cultures", "tasks"):
        if key in train:
            train[key] = tuple(train[key])
    adapter_dir = out / "adapter"
    cards = train_adapters(TrainConfig(data=data, out=str(adapter_dir), seed=seed, quiet=quiet, **train))
    if len(cards) != 1:
        raise SceneSimError(f'{path}: the end-to-end spec evaluates one joint adapter; set [train] adapter = "joint"')
    options = str(wvs.get("subject_options", ""))
    base_model = _with_options(model, options)
    tuned_model = _with_options(f"{model.split('?', 1)[0]}?adapter={adapter_dir}", options)
    variants = [(b, base_model, b) for b in wvs.get("baselines", ["persona", "cultural"])]
    variants.append(("clca", tuned_model, "persona"))
    runs: dict[str, dict[str, Any]] = {}
    for country in countries:
        for name, subject, prompting in variants:
            result = run_wvs(
                WVSConfig(
                    survey=survey,
                    country=country,
                    subject=subject,
                    personas=int(wvs.get("personas", 10)),
                    out=str(out / "wvs" / country / name),
                    seed=seed,
                    prompting=prompting,
                    answer_mode=str(wvs.get("answer", "choices")),
                    epsilon=float(wvs.get("epsilon", 1e-6)),
                    max_tokens=int(wvs.get("max_tokens", 8)),
                    concurrency=int(wvs.get("concurrency", 32)),
                    cache=cache,
                    quiet=quiet,
                    plots=bool(wvs.get("plots", True)),
                    questions=tuple(wvs.get("questions", ())),
                )
            )
            runs.setdefault(country, {})[name] = {k: result[k] for k in ("kl", "js", "accuracy", "safeguard_rate")}
    comparison = _compare(runs, model, cards[0])
    atomic_write_text(out / "comparison.json", json.dumps(comparison, indent=1) + "\n")
    atomic_write_text(out / "comparison.md", _markdown(comparison))
    return {"comparison": comparison, "runs": runs}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _compare(runs: dict[str, dict[str, Any]], model: str, card: dict[str, Any]) -> dict[str, Any]:
    from scene_sim.studies.clca.wvs_report import model_family, paper_rows

    variants = sorted({v for per in runs.values() for v in per}, key=["persona", "cultural", "clca"].index)
    average = {
        v: {m: _mean([runs[c][v][m] for c in runs if v in runs[c]]) for m in ("kl", "js", "accuracy", "safeguard_rate")}
        for v in variants
    }
    delta = None
    if "persona" in average and "clca" in average:
        delta = {
            m: None
            if average["clca"][m] is None or average["persona"][m] is None
            else average["clca"][m] - average["persona"][m]
            for m in ("kl", "js", "accuracy")
        }
    family = model_family(model)
    return {
        "model": model,
        "family": family,
        "adapter": card["adapter_dir"],
        "train_steps": card["steps"],
        "train_loss": [card["first_loss"], card["final_loss"]],
        "per_country": runs,
        "average": average,
        "clca_minus_persona": delta,
        "paper": paper_rows(family, next(iter(runs))) if family else [],
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _markdown(c: dict[str, Any]) -> str:
    lines = [
        f"# CLCA train -> WVS: {c['model']}",
        "",
        f"Adapter `{c['adapter']}`: {c['train_steps']} steps, loss {_fmt(c['train_loss'][0])} -> "
        f"{_fmt(c['train_loss'][1])}.",
        "",
        "| country | variant | KL-D | JS-D | accuracy | safeguards |",
        "|---|---|---|---|---|---|",
    ]
    for country, per in c["per_country"].items():
        for variant, m in per.items():
            lines.append(
                f"| {country} | {variant} | {_fmt(m['kl'])} | {_fmt(m['js'])} | {_fmt(m['accuracy'])} | "
                f"{_fmt(m['safeguard_rate'])} |"
            )
    for variant, m in c["average"].items():
        lines.append(f"| average | {variant} | {_fmt(m['kl'])} | {_fmt(m['js'])} | {_fmt(m['accuracy'])} | - |")
    if c["paper"]:
        lines += ["", f"Seed 004 for {c['family']} (averages over its five cultures):", ""]
        lines += ["| paper | KL-D | JS-D | accuracy |", "|---|---|---|---|"]
        for row in c["paper"]:
            lines.append(
                f"| {row['method']} | {_fmt(row['kl_avg'])} | {_fmt(row['js_avg'])} | {_fmt(row['accuracy_avg'])} |"
            )
    else:
        lines += ["", "Seed 004 has no model of this family."]
    return "\n".join(lines) + "\n"
