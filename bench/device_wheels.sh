#!/usr/bin/env bash
# Wheels a lent GPU machine lacks for the Chatterbox tests and bench, downloaded into .whl/
# (git-ignored) so a `device` run can carry them. That machine has Python 3.12 with CUDA torch,
# torchaudio, transformers, numpy, scipy, numba, scikit-learn, onnx, pytest...
# (/work/.library/device/KINDS.md) and no package index. livekit-agents is not carried (with
# av and livekit-local-inference it alone is over the 64 MiB a call carries): the run imports
# the engines through bench/engine_only.py.
#
#   bash bench/device_wheels.sh            # cp312 wheels for the GPU machine
#   bash bench/device_wheels.sh 3.11       # the same set for a local rehearsal
#
# Then, with the device tool: carry [".whl"] and the command
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 || exit
#   python3 -m pytest --noconftest -p bench.engine_only -q tests/test_chatterbox.py
#   python3 bench/bench_chatterbox.py --device cuda --runs 5 --tokens 150 --pipeline
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_version="${1:-3.12}"
abi="cp${python_version/./}"
dest="$root/.whl"
rm -rf "$dest"
mkdir -p "$dest"

platforms=()
for p in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
    manylinux_2_34 manylinux_2_35 manylinux2014 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
download=(python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all:
    --python-version "$python_version" --implementation cp --abi "$abi" --abi abi3 --abi none
    "${platforms[@]}" --platform any -d "$dest")

# chatterbox-tts and what its code imports that the GPU image does not have
"${download[@]}" "chatterbox-tts==0.1.7" s3tokenizer "conformer==0.3.2" diffusers \
    resemble-perth omegaconf antlr4-python3-runtime pyloudnorm importlib-metadata \
    "librosa==0.11.0" audioread soxr pooch decorator soundfile cffi pycparser platformdirs \
    "setuptools<81"  # perth imports pkg_resources
# localtts's settings (the engines read them)
"${download[@]}" pydantic pydantic-core pydantic-settings python-dotenv typing-inspection \
    annotated-types "typing-extensions>=4.14"

ls "$dest"
size_mib=$(du -sm "$dest" | cut -f1)
echo "device wheels: $(ls "$dest" | wc -l) files, ${size_mib} MiB in $dest"
if [ "$size_mib" -gt 60 ]; then
    echo "over the 64 MiB a device call carries (with the working tree)" >&2
    exit 1
fi
