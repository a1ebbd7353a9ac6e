"""The transcript viewer: one self-contained HTML file for any study's run directory.

``scene-sim view RUN_DIR`` reads the run directory (``run.json``,
``episodes/*.jsonl``, ``labels/*.json``, ``episodes.csv``, ``metrics.json``)
and writes ``RUN_DIR/viewer.html``: the metrics summary, a filterable list of
the episodes and each episode as a chat with its labels and its end reason.
A study adds what only it knows through an ``enrich`` hook (SCENE: the hidden
norm and the persona outlines, behind a reveal control closed by default).

The page needs no network and no server. The run's data is embedded once as
compact JSON (strings interned in one table) inside a
``<script type="application/json">`` element; the script renders the list
virtually (only the rows on screen exist in the DOM) and builds an episode's
chat only when it is opened, so runs of thousands of episodes stay
responsive. Every text is put into the page with ``textContent``, never as
markup, so chat content (model output) cannot inject anything.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import re
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scene_sim._json import JSONDecodeError, loads
from scene_sim.errors import SceneSimError
from scene_sim.events import iter_event_dicts
from scene_sim.rundir import RunDir, atomic_write_text, ensure_writable_dir

__all__ = [
    "DATA_ELEMENT_ID",
    "DATA_FORMAT",
    "Enricher",
    "add_view_arguments",
    "collect_viewer_data",
    "render_viewer_html",
    "run_view",
    "write_viewer",
]

#: A study's hook: ``(run_dir, spec, episode_records) -> extra top-level data keys``.
Enricher = Callable[[RunDir, dict[str, Any], list[dict[str, Any]]], dict[str, Any]]

#: ``id`` of the ``<script type="application/json">`` element holding the data.
DATA_ELEMENT_ID = "scene-data"
#: Version of the embedded data layout (bump on incompatible changes).
DATA_FORMAT = 1

_KIND_CODES = {"message": 0, "react": 1, "no-op": 2}
_TEMPLATE_FILES = ("template.html", "viewer.css", "viewer.js")
# Lines the viewer never needs, recognised in their first 100 characters and
# skipped before JSON parsing (prompts are large). A quote inside a JSON string
# is escaped, so this pattern can only match a real key.
_SKIP_RE = re.compile(r'"kind":\s*"(?:prompt|model_call)"')


class _Strings:
    """An interning table: each distinct string is stored once, referenced by index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text: Any) -> int:
        s = text if type(text) is str else ("" if text is None else str(text))
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.items)
            self.items.append(s)
        return i


class _Objects:
    """An interning table for small JSON objects repeated across episodes (model sets, metrics)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._index: dict[str, int] = {}

    def __call__(self, obj: Any) -> int:
        key = json.dumps(obj, sort_keys=True, default=str)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.items)
            self.items.append(obj)
        return i


def _read_json(path: Path, warnings: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name}: unreadable ({exc})")
        return None


def _read_events(path: Path) -> list[dict[str, Any]]:
    """The events of one episode file the viewer needs (prompts and model calls skipped).

    Raises:
        SceneSimError: on a line that is not JSON.

    """
    text = path.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip() and not _SKIP_RE.search(ln, 0, 100)]
    try:  # one parse for the whole file; line by line only to name a broken line
        events = loads("[" + ",".join(lines) + "]")
    except JSONDecodeError:
        for _ in iter_event_dicts(path):  # raises naming the broken line
            pass
        raise SceneSimError(f"{path}: invalid JSON") from None
    return [e for e in events if isinstance(e, dict) and e.get("kind") not in ("prompt", "model_call")]


def _read_csv_rows(path: Path, warnings: list[str]) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return {row["episode_id"]: row for row in csv.DictReader(fh) if row.get("episode_id")}
    except (OSError, csv.Error, KeyError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name}: unreadable ({exc})")
        return {}


def _opt_int(value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass
class _Actions:
    rows: list[list[Any]] = field(default_factory=list)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    actor_of: dict[int, str] = field(default_factory=dict)
    last_tick: int = 0


def _read_actions(events: list[dict[str, Any]], strings: _Strings) -> _Actions:
    """The chat actions of an event log as compact rows, with counts by kind and each turn's actor."""
    out = _Actions()
    for e in events:
        kind = e.get("kind")
        if kind == "turn_start":
            out.last_tick = max(out.last_tick, int(e.get("turn") or 0))
            continue
        if kind != "action":
            continue
        code = _KIND_CODES.get(str(e.get("action")), 2)
        out.counts[code] += 1
        turn_id = _opt_int(e.get("turn_id"))
        if turn_id is not None:
            out.actor_of[turn_id] = str(e.get("actor", ""))
        meta = e.get("meta") if isinstance(e.get("meta"), dict) else {}
        script = meta.get("script")
        out.rows.append(
            [
                int(e.get("turn") or 0),
                strings(e.get("actor", "")),
                code,
                strings(e.get("content", "")),
                turn_id,
                _opt_int(e.get("target_turn_id")),
                1 if e.get("parse_failure") else 0,
                strings(script) if isinstance(script, str) and script else -1,
            ]
        )
    return out


@dataclass
class _Labels:
    pairs: list[list[int]] = field(default_factory=list)
    has_breach: int | None = None
    validity: str = "unlabelled"
    justification: Any = None
    episode_metrics: Any = None


def _read_labels(
    labels: dict[str, Any] | None, actor_of: dict[int, str], subject_actor: str, strings: _Strings
) -> _Labels:
    """One label per chat turn of this episode (the last wins), the breach flag and the fidelity verdict."""
    out = _Labels()
    if not isinstance(labels, dict):
        return out
    labelled: dict[int, int] = {}  # chat turn id -> index in pairs
    out.has_breach = 0
    for item in labels.get("turn_labels") or []:
        if not isinstance(item, dict):
            continue
        tid = _opt_int(item.get("turn_id"))
        label = str(item.get("label", ""))
        if tid is None or not label or tid not in actor_of:
            continue  # a label of no chat turn (a judge's slip) would inflate the counts beside the chat
        if tid in labelled:
            out.pairs[labelled[tid]] = [tid, strings(label)]
        else:
            labelled[tid] = len(out.pairs)
            out.pairs.append([tid, strings(label)])
        actor = item.get("actor") or actor_of.get(tid)
        if label == "BREACH" and actor == subject_actor:
            out.has_breach = 1
    fidelity = labels.get("fidelity") if isinstance(labels.get("fidelity"), dict) else {}
    if fidelity.get("label"):
        out.validity = str(fidelity["label"]).upper()
    out.justification = fidelity.get("justification")
    if isinstance(labels.get("episode_metrics"), dict):
        out.episode_metrics = labels["episode_metrics"]
    return out


def _episode_record(
    episode_id: str,
    events: list[dict[str, Any]],
    labels: dict[str, Any] | None,
    csv_row: dict[str, str] | None,
    strings: _Strings,
    objects: _Objects,
) -> dict[str, Any]:
    start = next((e for e in events if e.get("kind") == "episode_start"), {})
    end = next((e for e in reversed(events) if e.get("kind") == "episode_end"), None)
    tup = start.get("tuple") or {}
    models = start.get("models") or {}
    subject_actor = start.get("subject") or ""
    acts = _read_actions(events, strings)
    labs = _read_labels(labels, acts.actor_of, subject_actor, strings)
    has_breach, validity = labs.has_breach, labs.validity
    if csv_row:
        if has_breach is None and _opt_int(csv_row.get("breaches")) is not None:
            has_breach = 1 if _opt_int(csv_row.get("breaches")) else 0
        if validity == "unlabelled" and csv_row.get("validity"):
            validity = csv_row["validity"].upper()

    record: dict[str, Any] = {
        "id": episode_id,
        # the model under test: SCENE's subject, else the one model a study's episode names
        "m": models.get("subject") or (csv_row or {}).get("subject") or _only_model(models) or "?",
        "sc": start.get("scenario_id") or "",
        "t": [
            tup.get("event", ""),
            tup.get("norm", ""),
            tup.get("elicitor", ""),
            tup.get("sanction", ""),
            _opt_int(tup.get("precedent")),
        ],
        "subj": subject_actor,
        "mo": objects(models),
        "seed": start.get("seed"),
        "rep": start.get("rep"),
        "end": end.get("reason") if end else "unfinished",
        "ticks": end.get("ticks", acts.last_tick) if end else acts.last_tick,
        "err": end.get("error") if end else None,
        "v": validity,
        "b": has_breach,
        "n": acts.counts,
        "a": acts.rows,
        "l": labs.pairs,
    }
    if labs.justification:
        record["fj"] = str(labs.justification)
    if labs.episode_metrics:
        record["em"] = objects(labs.episode_metrics)
    return record


def _only_model(models: dict[str, Any]) -> str | None:
    named = {str(v) for v in models.values() if v}
    return named.pop() if len(named) == 1 else None


def _fallback_summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ep in episodes:
        row = out.setdefault(ep["m"], {"episodes": 0, "valid": 0, "partial": 0, "invalid": 0})
        row["episodes"] += 1
        key = str(ep["v"]).lower()
        if key in ("valid", "partial", "invalid"):
            row[key] += 1
    return out


def collect_viewer_data(run_dir: str | Path, *, enrich: Enricher | None = None) -> dict[str, Any]:
    """Read a run directory into the viewer's compact data object.

    Args:
        run_dir: the run directory.
        enrich: a study's hook adding what only it knows (SCENE: ``norms``,
            ``sanctions`` and ``scenarios``, the hidden facts behind the reveal
            control); called with the run directory, the run's spec and the
            episode records.

    Returns:
        A JSON-serialisable dict: ``run`` (run.json facts), ``metrics`` (the
        ``models`` object of metrics.json, or None), ``summary`` (per-model
        counts from the episodes, used when metrics.json is absent),
        ``strings`` (interned strings), ``objects`` (interned JSON objects:
        an episode's ``mo`` model set and ``em`` episode metrics are indices
        into it), ``norms``, ``sanctions``,
        ``scenarios`` (hidden facts by id) and ``episodes`` (one compact
        record each; actions are ``[tick, actor, kind, content, turn_id,
        target_turn_id, parse_failure, script]`` with ``actor``, ``content``
        and ``script`` indices into ``strings`` and ``kind`` 0 message, 1
        react, 2 no-op).

    Raises:
        SceneSimError: if ``run_dir`` is not a run directory.

    """
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise SceneSimError(f"{rd.path}: no such run directory")
    if not rd.episodes_dir.is_dir() and not rd.run_json.exists():
        raise SceneSimError(f"{rd.path}: not a run directory (no run.json and no episodes/ folder)")
    warnings: list[str] = []
    run = _read_json(rd.run_json, warnings) or {}
    spec = run.get("spec") if isinstance(run.get("spec"), dict) else {}
    metrics_doc = _read_json(rd.path / "metrics.json", warnings)
    metrics = metrics_doc.get("models") if isinstance(metrics_doc, dict) else None
    csv_rows = _read_csv_rows(rd.path / "episodes.csv", warnings)

    strings = _Strings()
    objects = _Objects()
    episodes: list[dict[str, Any]] = []
    labelled = set(rd.labelled_ids())
    for episode_id in rd.episode_ids():
        try:
            events = _read_events(rd.episode_path(episode_id))
        except (SceneSimError, OSError, UnicodeDecodeError) as exc:
            warnings.append(f"episode {episode_id}: skipped ({exc})")
            continue
        if not events:
            warnings.append(f"episode {episode_id}: empty log, skipped")
            continue
        labels = _read_json(rd.label_path(episode_id), warnings) if episode_id in labelled else None
        episodes.append(_episode_record(episode_id, events, labels, csv_rows.get(episode_id), strings, objects))

    extra: dict[str, Any] = {"norms": {}, "sanctions": {}, "scenarios": {}}
    if enrich is not None:
        extra.update(enrich(rd, spec, episodes))
    return {
        "format": DATA_FORMAT,
        "run": {
            "path": str(rd.path),
            "name": rd.path.resolve().name,
            "command": run.get("command"),
            "created": run.get("created"),
            "version": run.get("scene_sim"),
            "models": spec.get("models") if isinstance(spec.get("models"), dict) else None,
        },
        "metrics": metrics if isinstance(metrics, dict) else None,
        "summary": _fallback_summary(episodes),
        "warnings": warnings,
        "strings": strings.items,
        "objects": objects.items,
        **extra,
        "episodes": episodes,
    }


def _embed_json(data: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">`` (no ``</script>``, no ``<!--``)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _asset(name: str) -> str:
    return resources.files("scene_sim").joinpath("_viewer", name).read_text(encoding="utf-8")


def render_viewer_html(data: dict[str, Any], *, title: str = "scene-sim viewer") -> str:
    """Fill the template with its CSS, script and ``data`` (from :func:`collect_viewer_data`)."""
    page, css, script = (_asset(n) for n in _TEMPLATE_FILES)
    # Each placeholder is replaced once and the data last, so nothing in the data is ever substituted.
    page = page.replace("/*{{CSS}}*/", css, 1).replace("/*{{JS}}*/", script, 1)
    page = page.replace("{{TITLE}}", html.escape(title), 1)
    before, marker, after = page.partition("{{DATA}}")
    if not marker:
        raise RuntimeError("viewer template has no {{DATA}} placeholder")
    return before + _embed_json(data) + after


def write_viewer(run_dir: str | Path, out: str | Path | None = None, *, enrich: Enricher | None = None) -> Path:
    """Write the viewer of ``run_dir`` to ``out`` (default ``RUN_DIR/viewer.html``).

    Args:
        run_dir: the run directory.
        out: the HTML file to write.
        enrich: the study's hook (see :func:`collect_viewer_data`).

    Returns:
        The path written.

    Raises:
        SceneSimError: if ``run_dir`` is not a run directory.

    """
    if Path(run_dir).is_file():
        raise SceneSimError(
            f"{run_dir}: is a file, not a run directory (pass the folder that holds run.json and episodes/)"
        )
    data = collect_viewer_data(run_dir, enrich=enrich)
    target = Path(out) if out is not None else Path(run_dir) / "viewer.html"
    if target.is_dir():
        target = target / "viewer.html"
    ensure_writable_dir(target.parent, "--out")
    title = f"scene-sim · {data['run']['name']} · {len(data['episodes'])} episodes"
    atomic_write_text(target, render_viewer_html(data, title=title))
    return target


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``view`` command's arguments to ``parser``."""
    parser.add_argument("run_dir", help="run directory to view")
    parser.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/viewer.html)")
    parser.add_argument("--open", action="store_true", help="open the file in the default browser")


def run_view(args: argparse.Namespace, *, enrich: Enricher | None = None) -> int:
    """Run a ``view`` command for parsed ``args`` (see :func:`add_view_arguments`); returns the exit status."""
    path = write_viewer(args.run_dir, args.out, enrich=enrich)
    print(f"viewer: {path}")
    if args.open:
        try:
            opened = webbrowser.open(path.resolve().as_uri())
        except Exception:  # a broken browser setup is no reason to fail: the file is written
            opened = False
        if not opened:
            print(f"scene-sim: no web browser found to open the viewer; open {path} yourself", file=sys.stderr)
    return 0
