#!/usr/bin/env bash
# One idempotent set-up step: creates .venv at the repository root and installs localtts
# with every extra (piper, xtts, chatterbox, agent, dev). Re-running it when nothing
# changed takes a second (a stamp of this script + pyproject.toml + python + torch choice).
#
# Why this is not a plain `pip install -e .[all]` (the workarounds live here, nowhere else):
#  * torch: a CUDA host (nvidia-smi works) gets the registry's CUDA build; any other host
#    gets torch==$LOCALTTS_TORCH_VERSION (2.13.0: a local CPU wheel in this environment).
#    Every later pip call is constrained to the installed torch so nothing replaces it.
#  * chatterbox-tts 0.1.7 pins torch==2.6.0, transformers==5.2.0, numpy<2, gradio...: it
#    is installed with --no-deps, then the libraries its code imports are installed unpinned
#    (it runs with torch 2.13 and transformers 5.x). coqui-tts is installed the same way so
#    its torchaudio requirement cannot pull a different torch.
#  * torchaudio/torchcodec: the registry's wheels are CUDA builds. On a CPU-only torch,
#    torchaudio's compiled extension cannot load, so its .so files are removed and it runs
#    in its documented pure-Python mode (functional/transforms/compliance work; audio is
#    read with soundfile, never torchaudio.load). torchcodec is installed only because
#    coqui-tts checks that it is present on torch>=2.9; it is never called.
#
# Environment: PYTHON (default python3), LOCALTTS_TORCH_VERSION (default 2.13.0),
# LOCALTTS_CUDA=1|0 (override the nvidia-smi check, e.g. in a docker build),
# LOCALTTS_ENGINES="piper xtts chatterbox" (which engine extras to install).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
torch_version="${LOCALTTS_TORCH_VERSION:-2.13.0}"
engines="${LOCALTTS_ENGINES:-piper xtts chatterbox}"
cuda=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=1; fi
# image builds have no GPU visible: LOCALTTS_CUDA=1 asks for the CUDA build anyway
if [ -n "${LOCALTTS_CUDA:-}" ]; then cuda="$LOCALTTS_CUDA"; fi

stamp_file=.venv/.localtts-install
stamp="$( (cat agent/install.sh pyproject.toml; "$python" --version; echo "$torch_version $engines cuda=$cuda") | sha256sum | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    echo "localtts: .venv is up to date"
    exit 0
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip >/dev/null

# 1. torch, chosen once, then pinned for every later step
case " $engines " in *" xtts "*|*" chatterbox "*) need_torch=1 ;; *) need_torch=0 ;; esac
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
if [ "$need_torch" = 1 ]; then
    if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
        if [ "$cuda" = 1 ]; then "${pip[@]}" torch; else "${pip[@]}" "torch==$torch_version"; fi
    fi
    .venv/bin/python -c "import torch; print('torch==' + torch.__version__)" >"$constraints"
fi

# 2. the project itself (editable) with the extras whose pins are sane
extras="agent,dev"
case " $engines " in *" piper "*) extras="piper,$extras" ;; esac
"${pip[@]}" -c "$constraints" -e ".[$extras]"

# 3. engines with stale or torch-pulling pins: the packages without their pins, then what
#    their code imports
if [ "$need_torch" = 1 ]; then
    "${pip[@]}" --no-deps "torchaudio" "torchcodec"
    if [ "$cuda" = 0 ]; then
        site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        rm -f "$site"/torchaudio/lib/*.so
    fi
    common=(librosa transformers safetensors huggingface-hub scipy tqdm numpy)
    case " $engines " in *" xtts "*)
        "${pip[@]}" --no-deps "coqui-tts>=0.28,<0.29"
        "${pip[@]}" -c "$constraints" "${common[@]}" six anyascii "coqpit-config>=0.2.5,<0.3" \
            "coqui-tts-trainer>=0.4,<0.5" einops "fsspec[http]" inflect ko-speech-tools \
            matplotlib monotonic-alignment-search num2words numba pysbd pyyaml
    ;; esac
    case " $engines " in *" chatterbox "*)
        "${pip[@]}" --no-deps "chatterbox-tts==0.1.7"
        "${pip[@]}" -c "$constraints" "${common[@]}" s3tokenizer diffusers resemble-perth \
            "conformer==0.3.2" omegaconf pyloudnorm nvidia-ml-py
    ;; esac
fi

if [ "$need_torch" = 1 ]; then
    echo "localtts: pip's resolver may complain above that chatterbox-tts/coqui-tts pins are" \
         "not met (torch, transformers, gradio...): expected, they are installed without them"
fi
echo "$stamp" >"$stamp_file"
echo "localtts: installed into .venv ($(.venv/bin/python --version), engines: $engines)"
