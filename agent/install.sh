#!/usr/bin/env bash
# One idempotent set-up step: creates .venv at the repository root and installs localtts
# with every extra (piper, xtts, chatterbox, agent, dev, silero), every package at the exact version
# agent/requirements.lock gives (regenerate it with `bash agent/lock.sh`). Re-running it when
# nothing changed takes a second (a stamp of this script, the lock, pyproject.toml, python).
#
# Why this is not a plain `pip install -e .[all]` (the workarounds live here, nowhere else):
#  * Every pip call is constrained by the lock (`-c`), so two installs a month apart get the
#    same versions; unpinned installs drift and break (transformers 5.24 broke coqui-tts).
#  * torch: the lock's version (2.13.0) from PyPI, whose Linux wheel is a CUDA build that also
#    runs on the CPU. LOCALTTS_TORCH_INDEX_URL points pip at another torch index for that one
#    package, e.g. https://download.pytorch.org/whl/cpu (a CPU-only build, ~10x smaller) or
#    .../whl/cu128 (older NVIDIA drivers); its `2.13.0+cpu` still satisfies the lock's pin.
#  * chatterbox-tts 0.1.7 pins torch==2.6.0, transformers==5.2.0, numpy<2, gradio...; coqui-tts
#    would pull a torchaudio of its choosing: both are installed with --no-deps, then what
#    their code imports (agent/requirements.in, resolved into the lock). They run with torch
#    2.13 and transformers 5.17.
#  * torchaudio: the registry's wheel is built against another torch than the lock's, so its
#    compiled extension may not load. When `import torchaudio` fails for that reason its .so
#    files are removed and it runs in its documented pure-Python mode (functional/transforms/
#    compliance work; audio is read with soundfile, never torchaudio.load). torchcodec is
#    installed only because coqui-tts checks that it is present on torch>=2.9; never called.
#
# Environment: PYTHON (default python3), LOCALTTS_TORCH_INDEX_URL (see above),
# LOCALTTS_ENGINES="piper xtts chatterbox" (which engines; without xtts and chatterbox no
# torch is installed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
engines="${LOCALTTS_ENGINES:-piper xtts chatterbox}"
torch_index="${LOCALTTS_TORCH_INDEX_URL:-}"
lock=agent/requirements.lock

stamp_file=.venv/.localtts-install
stamp="$( (cat agent/install.sh "$lock" agent/requirements.in pyproject.toml
           "$python" --version; echo "$engines $torch_index") | sha256sum | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    echo "localtts: .venv is up to date"
    exit 0
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q -c "$lock")
"${pip[@]}" pip setuptools

# 1. torch first (possibly from another index), so nothing later picks a different build
case " $engines " in *" xtts "*|*" chatterbox "*) need_torch=1 ;; *) need_torch=0 ;; esac
if [ "$need_torch" = 1 ]; then
    if [ -n "$torch_index" ]; then
        "${pip[@]}" torch --index-url "$torch_index" --extra-index-url https://pypi.org/simple
    else
        "${pip[@]}" torch
    fi
fi

# 2. the project itself (editable; built with the lock's setuptools, not a fresh download)
extras="agent,dev,silero"
case " $engines " in *" piper "*) extras="piper,$extras" ;; esac
# (setuptools' notice that an editable install maps folders is for packagers, not users)
PYTHONWARNINGS="ignore:Editable installation" "${pip[@]}" --no-build-isolation -e ".[$extras]"

# 3. engines with stale or torch-pulling pins: the packages without their dependencies,
#    then what their code imports
if [ "$need_torch" = 1 ]; then
    no_deps=(torchcodec)
    case " $engines " in *" xtts "*) no_deps+=(coqui-tts) ;; esac
    case " $engines " in *" chatterbox "*) no_deps+=(chatterbox-tts) ;; esac
    # what their code imports first: pip checks every installed package's pins after an
    # install with dependencies, and would print chatterbox-tts' stale ones as "conflicts";
    # an install with --no-deps checks nothing
    "${pip[@]}" -r agent/requirements.in
    "${pip[@]}" --no-deps "${no_deps[@]}"
    if ! .venv/bin/python -c "import torchaudio" >/dev/null 2>&1; then
        site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        rm -f "$site"/torchaudio/lib/*.so
        .venv/bin/python -c "import torchaudio"
    fi
fi

echo "$stamp" >"$stamp_file"
echo "localtts: installed into .venv ($(.venv/bin/python --version), engines: $engines)"
