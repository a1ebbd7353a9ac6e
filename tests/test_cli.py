"""The command line: the contract commands and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scene_sim.cli import main
from tests.backends.fakeserver import FakeServer, Reply

REPO = Path(__file__).resolve().parents[1]
SCENARIO = "bug_report__concise_answer_norm__address_explicit__silent_ignore__p1"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scene_sim.cli", *args], cwd=REPO, capture_output=True, text=True)


def test_taxonomy_json_is_the_contract_object():
    res = _cli("taxonomy", "--json")
    assert res.returncode == 0
    data = json.loads(res.stdout)
    assert list(data) == ["events", "norms", "elicitors", "sanctions", "precedent", "cartesian", "valid"]
    assert data["events"] == 13 and data["norms"] == 14 and data["cartesian"] == 15288


def test_run_writes_a_contract_run_directory(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--scenario",
            SCENARIO,
            "--subject",
            "scripted/learner",
            "--personas",
            "scripted",
            "--orchestrator",
            "scripted",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["spec"]["models"]["subject"] == "scripted/learner"
    (episode,) = list((out / "episodes").glob("*.jsonl"))
    events = [json.loads(x) for x in episode.read_text().splitlines()]
    assert events[0]["kind"] == "episode_start" and events[-1]["kind"] == "episode_end"
    labels = json.loads((out / "labels" / (episode.stem + ".json")).read_text())
    assert {"turn_labels", "episode_metrics", "fidelity"} <= set(labels)
    header = (out / "episodes.csv").read_text().splitlines()[0].split(",")
    assert header[:18] == [
        "episode_id",
        "subject",
        "event",
        "norm",
        "elicitor",
        "sanction",
        "precedent",
        "rep",
        "seed",
        "end_reason",
        "demonstrations",
        "breaches",
        "sanctions",
        "repairs",
        "repaired",
        "x_e",
        "y_e",
        "validity",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "scripted/learner" in metrics["models"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["run", "--scenario", "bug_report__concise", "--subject", "scripted/learner", "--out", "X"],
            "unknown scenario 'bug_report__concise' (did you mean",
        ),
        (
            ["run", "--scenario", SCENARIO, "--subject", "antropic/claude-x", "--out", "X"],
            "valid providers: anthropic, google, openai, hf, local, scripted",
        ),
        (
            ["run", "--scenario", SCENARIO, "--subject", "scripted/lerner", "--out", "X"],
            "unknown subject policy 'scripted/lerner' (did you mean 'learner'",
        ),
        (["run", "--subject", "scripted/learner", "--out", "X"], "the following arguments are required: --scenario"),
        (["sweep", "no/such/spec.toml", "--out", "X"], "no/such/spec.toml: spec file not found"),
        (["analyze", "no/such/run"], "no/such/run: no such run directory"),
        (["taxonomy", "--dir", "no/such/dir"], "events.json: file not found"),
    ],
)
def test_user_mistakes_give_one_line_and_no_traceback(args, expected, tmp_path):
    res = _cli(*[a.replace("X", str(tmp_path / "out")) for a in args])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert expected in lines[0]
    assert "Traceback" not in res.stderr


def test_a_malformed_scenario_file_names_file_and_field(tmp_path):
    bad = json.loads((REPO / "worlds/scene/scenarios" / f"{SCENARIO}.json").read_text())
    bad["scaffold"]["transcript"]["elicitor_turn"]["actor"] = "Nobody"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    res = _cli("run", "--scenario", str(path), "--subject", "scripted/learner", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{path}: " in res.stderr and "elicitor_turn.actor: 'Nobody' is not in the cast" in res.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": "x", ')
    res = _cli("run", "--scenario", str(broken), "--subject", "scripted/learner", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and f"{broken}: invalid JSON" in res.stderr


def test_a_leaking_scaffold_is_rejected(tmp_path):
    bad = json.loads((REPO / "worlds/scene/scenarios" / f"{SCENARIO}.json").read_text())
    bad["scaffold"]["channel"]["description"] += " Keep it short: one line answers only."
    path = tmp_path / "leak.json"
    path.write_text(json.dumps(bad))
    res = _cli("run", "--scenario", str(path), "--subject", "scripted/learner", "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "hints at the norm" in res.stderr


def test_schema_command_exports_json_schemas(tmp_path):
    assert main(["schema", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "scenario_v1.schema.json").read_text())
    assert "scaffold" in doc["properties"] and "hidden" in doc["properties"]
    assert (tmp_path / "scaffold_v1.schema.json").exists()


# -- failures are failures: a non-zero exit and one line ------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("scene-sim: error:")]
    assert len(errors) == 1, err
    assert not any("Traceback" in ln for ln in err)
    return errors[0]


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCENE_SIM_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("OPENAI_BASE_URL", "SCENE_SIM_PRICES", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path


@pytest.mark.parametrize("quiet", [False, True])
def test_run_with_a_provider_answering_401_fails(offline_env, monkeypatch, capsys, quiet):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    server = FakeServer()
    server.default = Reply(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
    try:
        subject = f"openai/gpt-test?base_url={server.url}/v1"
        args = ["run", "--scenario", SCENARIO, "--subject", subject, "--out", str(offline_env / "r"), "--cache", "off"]
        code = main([*args, *(["--quiet"] if quiet else [])])
    finally:
        server.close()
    assert code == 1
    line = _one_line_error(capsys)
    assert "ended with an error" in line and "401" in line
    assert "sk-test-not-a-real-key" not in line


def test_a_sweep_whose_generator_rejects_every_scenario_fails(offline_env, capsys):
    spec = offline_env / "gen.toml"
    spec.write_text(
        'subjects = ["scripted/learner"]\n[scenarios]\nsource = "generate"\ntuples = 2\ngenerator = "fake/gen"\n'
        '[run]\ncache = "off"\n'
    )
    code = main(["sweep", str(spec), "--out", str(offline_env / "s"), "--quiet"])
    assert code != 0
    assert "produced no scenario" in _one_line_error(capsys)


def test_a_failed_generate_leaves_no_empty_file(offline_env, capsys):
    out = offline_env / "gen" / "scenarios.jsonl"
    code = main(["generate", "--tuples", "2", "--model", "fake/gen", "--out", str(out), "--cache", "off"])
    assert code == 1
    assert not out.exists()
    assert "no scenario generated" in _one_line_error(capsys)


@pytest.mark.parametrize("where", ["proc", "under_file", "file"])
@pytest.mark.parametrize("command", ["run", "sweep", "view"])
def test_an_unwritable_out_is_one_line_before_anything_runs(offline_env, monkeypatch, capsys, where, command):
    from scene_sim.studies.scene.model import SceneModel

    async def never(self):  # the episode must not be simulated when --out cannot be written
        raise AssertionError("simulated before checking --out")

    monkeypatch.setattr(SceneModel, "arun", never)
    afile = offline_env / "afile"
    afile.write_text("x")
    out = {"proc": "/proc/scene-sim-x", "under_file": str(afile / "sub"), "file": str(afile)}[where]
    if command == "run":
        args = ["run", "--scenario", SCENARIO, "--subject", "scripted/learner", "--out", out, "--quiet"]
    elif command == "sweep":
        args = ["sweep", str(REPO / "experiments" / "offline_smoke.toml"), "--out", out, "--quiet"]
    else:
        run_dir = REPO / "tests" / "fixtures" / "paper"
        args = ["view", str(run_dir), "--out", str(Path(out) / "viewer.html") if where != "file" else out + "/v.html"]
    assert main(args) == 2
    line = _one_line_error(capsys)
    assert "--out" in line and ("cannot write" in line or "is a file" in line)


@pytest.mark.parametrize("command", ["scenarios", "schema"])
def test_a_closed_pipe_exits_quietly(command):
    res = subprocess.run(
        f"{sys.executable} -m scene_sim.cli {command} | true; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


# -- accepted nonsense ------------------------------------------------------------------------------

RUN = ["run", "--scenario", SCENARIO, "--subject", "scripted/learner", "--out", "OUT", "--quiet"]
GEN = ["generate", "--tuples", "1", "--model", "fake/gen", "--out", "OUT/x.jsonl"]


@pytest.mark.parametrize(
    ("extra", "base", "expected"),
    [
        (["--post-sanction", "-1"], RUN, "--post-sanction: must be at least 0, got -1"),
        (["--temperature", "-5"], RUN, "--temperature: must be between 0 and 2, got -5"),
        (["--temperature", "nan"], RUN, "--temperature: must be between 0 and 2"),
        (["--max-turns", "0"], RUN, "--max-turns: must be between 1 and 200, got 0"),
        (["--rep", "-1"], RUN, "--rep: must be at least 0"),
        (["--seed", "-3"], RUN, "--seed: must be at least 0"),
        (["--seed", "x"], RUN, "--seed: must be a whole number, got 'x'"),
        (["--reps", "0"], GEN, "--reps: must be at least 1"),
        (["--concurrency", "0"], GEN, "--concurrency: must be between 1 and 4096"),
        (["--max-attempts", "0"], GEN, "--max-attempts: must be between 1 and 20"),
        (["--tuples", "0"], GEN, "--tuples: must be at least 1"),
    ],
)
def test_numeric_flags_are_range_checked(offline_env, capsys, extra, base, expected):
    out = str(offline_env / "o")
    args = [a.replace("OUT", out) for a in base]
    if extra[0] in args:  # replace a flag the base already has
        i = args.index(extra[0])
        args[i : i + 2] = extra
    else:
        args += extra
    assert main(args) == 2
    assert expected in _one_line_error(capsys)
    assert not (offline_env / "o").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[run]\ntemperature = -5", "run.temperature: Input should be greater than or equal to 0, got -5"),
        ("[run]\nreps = 0", "run.reps: Input should be greater than or equal to 1, got 0"),
        ("[run]\nconcurrency = 0", "run.concurrency"),
        ("[run]\nmax_turns = 0", "run.max_turns"),
        ("[run]\nmin_post_sanction_turns = -1", "run.min_post_sanction_turns"),
        ("[run]\nseed = -1", "run.seed"),
        ("[run]\nrepair_window = -2", "run.repair_window"),
        ("[budget]\nusd = -1", "budget.usd: Input should be greater than 0, got -1"),
        ("[budget]\nusd = nan", "budget.usd"),
        ("[limits.openai]\nrpm = -1", "limits.openai.rpm: must be a positive number, got -1"),
        ("[limits.openai]\nmax_connections = 0.5", "limits.openai.max_connections"),
    ],
)
def test_spec_fields_are_range_checked(offline_env, capsys, toml, expected):
    spec = offline_env / "bad.toml"
    spec.write_text(f'subjects = ["scripted/learner"]\n{toml}\n')
    assert main(["sweep", str(spec), "--out", str(offline_env / "o")]) == 2
    assert expected in _one_line_error(capsys)


@pytest.mark.parametrize(
    ("model", "provider"),
    [("gemini/flash", "google"), ("claude/opus", "anthropic"), ("gpt4/x", "openai"), ("antropic/x", "anthropic")],
)
def test_model_string_suggestions_name_the_right_provider(capsys, model, provider):
    assert main(["run", "--scenario", SCENARIO, "--subject", model, "--out", "unused"]) == 2
    assert f"(did you mean '{provider}'?)" in _one_line_error(capsys)


def test_view_of_a_file_says_it_is_a_file(tmp_path, capsys):
    path = tmp_path / "episode.jsonl"
    path.write_text("{}\n")
    assert main(["view", str(path)]) == 2
    line = _one_line_error(capsys)
    assert "is a file, not a run directory" in line and "no such run directory" not in line


def test_view_open_without_a_browser_says_so(tmp_path, monkeypatch, capsys):
    import shutil
    import webbrowser

    run_dir = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "paper", run_dir)
    monkeypatch.setattr(webbrowser, "open", lambda *a, **k: False)
    assert main(["view", str(run_dir), "--open"]) == 0
    assert "no web browser found" in capsys.readouterr().err
    assert (run_dir / "viewer.html").exists()


# -- sweep flags --------------------------------------------------------------------------------------

FAKE_SPEC = 'subjects = ["fake/cli"]\njudge = "scripted"\n[scenarios]\nids = ["{sid}"]\n[run]\nmax_turns = 2\n'


def test_sweep_cache_flag_overrides_the_spec(offline_env, capsys):
    spec = offline_env / "fake.toml"
    spec.write_text(FAKE_SPEC.format(sid=SCENARIO))  # run.cache defaults to read-write
    cache = offline_env / "cache"
    assert main(["sweep", str(spec), "--out", str(offline_env / "off"), "--quiet", "--cache", "off"]) == 0
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    assert main(["sweep", str(spec), "--out", str(offline_env / "rw"), "--quiet"]) == 0
    assert any(p.is_file() for p in cache.rglob("*"))


def test_sweep_budget_over_unpriced_models_needs_allow_unpriced(offline_env, monkeypatch, capsys):
    prices = offline_env / "prices.toml"
    prices.write_text('["anthropic/claude-x"]\ninput = 1\noutput = 1\n')
    monkeypatch.setenv("SCENE_SIM_PRICES", str(prices))
    spec = offline_env / "fake.toml"
    spec.write_text(FAKE_SPEC.format(sid=SCENARIO) + "[budget]\nusd = 5.0\n")
    assert main(["sweep", str(spec), "--out", str(offline_env / "a"), "--quiet"]) == 2
    line = _one_line_error(capsys)
    assert "unpriced models: fake/cli" in line and "--allow-unpriced" in line
    assert main(["sweep", str(spec), "--out", str(offline_env / "b"), "--quiet", "--allow-unpriced"]) == 0
    assert "fake/cli" in capsys.readouterr().err  # the warning that the budget cannot bind it
