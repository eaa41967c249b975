#!/usr/bin/env bash
# Build deploy/Dockerfile and check the image against a real `vllm serve` of the embedded model on
# this machine: a routed answer, then `docker stop` in the middle of a stream (the stream must end
# with [DONE] and the container exit 0).  Needs a running Docker daemon and the project's .venv.
#   bash deploy/check_image.sh                       # FROM python:3.12-slim
#   BASE_IMAGE=my-mirror/python:3.12 bash deploy/check_image.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VLLM_PORT=${VLLM_PORT:-18301}
GLIMP_PORT=${GLIMP_PORT:-18400}
MODEL=$($PY -c "from glimp_integrations.embedded import embedded_model_dir; print(embedded_model_dir())")
wait_for() { for _ in $(seq 180); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no answer from $1" >&2; return 1; }

docker build --network host ${BASE_IMAGE:+--build-arg BASE_IMAGE=$BASE_IMAGE} -f deploy/Dockerfile -t glimp-serve .
VLLM_CPU_KVCACHE_SPACE=1 $PY -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name smollm2 \
  --host 127.0.0.1 --port "$VLLM_PORT" --max-logprobs -1 --enable-prefix-caching --enable-prompt-tokens-details \
  --enforce-eager --max-model-len 4096 --no-enable-chunked-prefill >/dev/null 2>&1 &
vllm_pid=$!
trap 'kill $vllm_pid 2>/dev/null; docker rm -f glimp-check >/dev/null 2>&1 || true' EXIT
wait_for "http://127.0.0.1:$VLLM_PORT/v1/models"
# the tokenizer is loaded from the path the server reports, so the model folder is mounted there
docker run -d --name glimp-check --network host -v "$MODEL:$MODEL:ro" glimp-serve \
  --small "http://127.0.0.1:$VLLM_PORT/v1" --large "http://127.0.0.1:$VLLM_PORT/v1" --port "$GLIMP_PORT" >/dev/null
wait_for "http://127.0.0.1:$GLIMP_PORT/health"
request='{"model": "glimp", "messages": [{"role": "user", "content": "What is 3 + 4?"}], "max_tokens": 24'
curl -sf "http://127.0.0.1:$GLIMP_PORT/v1/chat/completions" -H 'content-type: application/json' -d "$request}" \
  | $PY -c "import json, sys; r = json.load(sys.stdin); assert r['choices'][0]['message']['content'] and r['glimp']['steps']; print('answer:', r['choices'][0]['message']['content'])"
stream=$(mktemp)
long='{"model": "glimp", "messages": [{"role": "user", "content": "Count from 1 to 100, one number per line."}]'
curl -sN "http://127.0.0.1:$GLIMP_PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d "$long, \"max_tokens\": 300, \"stream\": true}" >"$stream" &
curl_pid=$!
until [ "$(grep -c '^data' "$stream")" -ge 3 ]; do sleep 0.2; done
at_stop=$(grep -c '^data' "$stream")
grep -q '^data: \[DONE\]' "$stream" && { echo "the stream ended before docker stop: ask for a longer answer" >&2; exit 1; }
docker stop --time 120 glimp-check >/dev/null  # the grace period must outlast the longest run
wait $curl_pid || { echo "the stream broke off (curl exit $?)" >&2; exit 1; }
[ "$(grep '^data' "$stream" | tail -n 1)" = "data: [DONE]" ] || { echo "docker stop cut the open stream" >&2; exit 1; }
[ "$(docker inspect glimp-check --format '{{.State.ExitCode}}')" = 0 ] || { echo "glimp exited non-zero" >&2; exit 1; }
echo "image ok: a routed answer; docker stop came $at_stop events into a stream, which went on to $(grep -c '^data' "$stream") and [DONE], and glimp exited 0"
