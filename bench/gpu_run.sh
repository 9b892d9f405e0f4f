#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU whose python3 has a CUDA build of torch:
#   1. bench/gpu_check.py: fp16 AMP with gradient scaling through slimship's Trainer, speed-up over fp32;
#   2. `slimship train --amp auto` on the embedded sentiment data: the CLI end to end on CUDA (accuracy, time);
#   3. bench/gpu_serve.py on ONNX artifacts: what the GPU image serves through (onnxruntime-gpu, CUDA first),
#      with the CUDA libraries registered with the dynamic loader as deploy/Dockerfile.gpu registers them.
#
#   bench/gpu_run.sh OUT_DIR [MODEL_DIR ...]
#
# STEPS (optional): which of check, train, serve to run (default all three).
# Run as root: step 3 writes /etc/ld.so.conf.d/slimship-cuda.conf and runs ldconfig, as the image's build does.
# SITE (optional): a folder put first on PYTHONPATH, for packages whose pinned versions differ from the
# machine's own (transformers 4.57 with its tokenizers and huggingface_hub, onnxruntime-gpu). Each step's log
# goes to OUT_DIR; a failing step does not stop the next.
set -u
out=${1:?usage: bench/gpu_run.sh OUT_DIR [MODEL_DIR ...]}
shift
mkdir -p "$out"
steps=" ${STEPS:-check train serve} "
export PYTHONPATH="${SITE:+$SITE:}$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 - <<'EOF' 2>&1 | tee -a "$out/gpu.txt"
import onnxruntime, tokenizers, torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, available {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
      f"onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}")
EOF

# The CUDA libraries pip installs (site-packages/nvidia/*/lib), known to the loader without LD_LIBRARY_PATH.
sites=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))')
# shellcheck disable=SC2086
find $sites ${SITE:-} -path '*/nvidia/*' -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u \
    > /etc/ld.so.conf.d/slimship-cuda.conf && ldconfig

if [[ $steps == *" check "* ]]; then
    echo "== gpu_check"
    timeout 300 python3 bench/gpu_check.py --steps 40 2>&1 | tee "$out/gpu_check.log"
fi

if [[ $steps == *" train "* ]]; then
    echo "== slimship train --amp auto (CUDA)"
    start=$(date +%s)
    timeout 300 python3 -m slimship train --model minilm --data examples/sentiment --out /tmp/gpu-teacher \
        --amp auto --max-length 64 --quiet 2>&1 | tail -n 20 | tee "$out/train.log"
    echo "train wall: $(( $(date +%s) - start )) s" | tee -a "$out/train.log"
fi

if [[ $steps == *" serve "* && $# -gt 0 ]]; then
    echo "== gpu_serve"
    timeout 300 python3 bench/gpu_serve.py "$@" --json "$out/gpu_serve.json" 2>&1 | tee "$out/gpu_serve.log"
fi
