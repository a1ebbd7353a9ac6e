#!/usr/bin/env bash
# Episodes/s of a small SCENE sweep against `vllm serve` on one GPU (prefix caching on).
#
#   benchmarks/device/vllm_sweep.sh [MODEL]
#
# MODEL: a 0.5B-1.5B instruct model, a local folder or hub id (default: the first of
# Qwen2.5-1.5B-Instruct, Qwen2.5-0.5B-Instruct found in the Hugging Face cache, else the
# 1.5B id from the hub). Every model role (subject, personas) is the served model; the
# orchestrator is scripted and the judge off, so the figure is the simulation's alone.
# Needs a GPU and a package index (pip installs vllm and scene-sim into /tmp venvs).
# Env: HARD_TIMEOUT (s, default 540), REPS (default 3: 34 bank scenarios x REPS episodes),
# CONCURRENCY (default 128), EXECUTOR (local or ray, default local), OUT (copies the results).
set -euo pipefail
HARD_TIMEOUT=${HARD_TIMEOUT:-540}
if [[ -z "${_VLLM_SWEEP_TIMED:-}" ]]; then  # everything below under one hard limit
  _VLLM_SWEEP_TIMED=1 exec timeout -k 15 "$HARD_TIMEOUT" bash "$0" "$@"
fi
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/vllm-sweep}
PORT=${PORT:-8000}
REPS=${REPS:-3}
CONCURRENCY=${CONCURRENCY:-128}
EXECUTOR=${EXECUTOR:-local}
PY=${PYTHON:-python3}
mkdir -p "$WORK"

MODEL=${1:-}
if [[ -z "$MODEL" ]]; then
  for id in Qwen/Qwen2.5-1.5B-Instruct Qwen/Qwen2.5-0.5B-Instruct; do
    snap=$(ls -d "${HF_HOME:-$HOME/.cache/huggingface}"/hub/models--${id/\//--}/snapshots/*/ 2>/dev/null | head -1 || true)
    if [[ -n "$snap" ]]; then MODEL=$snap; break; fi
  done
  MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
fi
echo "model: $MODEL" >&2

# two environments: vLLM pins its own torch; scene-sim needs only its openai extra
[[ -x "$WORK/vllm/bin/vllm" ]] || { "$PY" -m venv "$WORK/vllm" && "$WORK/vllm/bin/pip" install -q vllm; }
[[ -x "$WORK/scene/bin/scene-sim" ]] || { "$PY" -m venv "$WORK/scene" && "$WORK/scene/bin/pip" install -q -e "$REPO[openai,ray]"; }

"$WORK/vllm/bin/vllm" serve "$MODEL" --served-model-name subject --port "$PORT" \
  --enable-prefix-caching --max-model-len 8192 --gpu-memory-utilization 0.85 --max-num-seqs 256 \
  >"$WORK/vllm.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://localhost:$PORT/v1/models" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -30 "$WORK/vllm.log" >&2; echo "vllm serve exited" >&2; exit 1; }
  sleep 1
done
curl -sf "http://localhost:$PORT/v1/models" >/dev/null || { echo "vllm serve did not come up" >&2; exit 1; }

SPEC=$WORK/spec.toml
cat >"$SPEC" <<TOML
name = "vllm_device"
subjects = ["openai/subject?base_url=http://localhost:$PORT/v1"]
personas = "openai/subject?base_url=http://localhost:$PORT/v1"
orchestrator = "scripted"
judge = "none"
[scenarios]
source = "bank"
[run]
reps = $REPS
max_turns = 8
concurrency = $CONCURRENCY
cache = "off"
temperature = 0.7
[limits.openai]
max_connections = $CONCURRENCY
timeout_s = 120
TOML
rm -rf "$WORK/run"
export OPENAI_API_KEY=${OPENAI_API_KEY:-unused}
"$WORK/scene/bin/scene-sim" sweep "$SPEC" --out "$WORK/run" --quiet --executor "$EXECUTOR"

"$WORK/scene/bin/python" - "$WORK/run" "http://localhost:$PORT/metrics" <<'PY'
import json, sys, urllib.request
from pathlib import Path
run = json.loads((Path(sys.argv[1]) / "run.json").read_text())
s = run["sessions"][-1]
total = (s.get("accounting") or {}).get("total") or {}
metrics = urllib.request.urlopen(sys.argv[2], timeout=10).read().decode()
prefix = {l.split()[0]: float(l.split()[-1]) for l in metrics.splitlines()
          if "prefix_cache" in l and not l.startswith("#")}
hits = sum(v for k, v in prefix.items() if "hits" in k)
queries = sum(v for k, v in prefix.items() if "queries" in k)
out = {"episodes": s["simulated"], "errors": s["errors"], "wall_s": s["wall_time_s"],
       "episodes_per_s": round(s["simulated"] / s["wall_time_s"], 2),
       "calls": total.get("calls"), "calls_per_s": round((total.get("calls") or 0) / s["wall_time_s"], 1),
       "input_tokens": total.get("input_tokens"), "output_tokens": total.get("output_tokens"),
       "prefix_cache_hit_rate": round(hits / queries, 3) if queries else None}
print(json.dumps(out, indent=2))
PY
if [[ -n "${OUT:-}" ]]; then cp "$WORK/run/run.json" "$OUT/" && tail -200 "$WORK/vllm.log" >"$OUT/vllm.log"; fi
