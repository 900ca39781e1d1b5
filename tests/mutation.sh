#!/usr/bin/env bash
# Mutation testing of one core module: `bash tests/mutation.sh MODULE` (no MODULE: the list).
# mutmut (dev extra) makes small behaviour-breaking edits to MODULE, one at a time, and runs
# the tests of that module's selection against each; a mutant no test fails on "survived".
# docs/testing.md records each module's score and why each survivor is acceptable.
#
# Why a staging folder (build/mutation/MODULE) and not mutmut in the repository root:
#  * mutmut names a function by its file's path (plugins/livekit/plugins/localtts/host.py ->
#    plugins.livekit.plugins.localtts.host) but records hits under its import name
#    (livekit.plugins.localtts.host): the stage puts each tree where its import name says.
#  * its settings ([tool.mutmut]) are one per module here; the stage gets its own
#    pyproject.toml: the repository's pytest settings plus this module's mutmut settings.
# The stage is rebuilt on every run; results stay there (`cd build/mutation/MODULE &&
# ../../../.venv/bin/mutmut show NAME` shows a mutant's diff).
#
# Runs under `nice -n 19` (the machine is shared); MUTATION_JOBS (default 2) mutants at once;
# MUTATION_TESTS="tests/a.py tests/b.py" replaces the module's test selection (to compare).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# module -> "files to mutate (import paths)|process isolation|test selection|functions"
# isolation: fork (from the process that ran the tests once: its imports and cached models
# are shared), forkserver where a test setup is not fork-safe (tts: the engine thread pool
# started by the stats run does not exist in a fork, and every mutant would hang);
# functions (mutant-name globs, optional): the part of a large module this run covers
declare -A modules=(
    [host]="livekit/plugins/localtts/host.py|fork|tests/test_host.py"
    [text]="livekit/plugins/localtts/text.py livekit/plugins/localtts/textcut.py|fork|tests/test_text.py"
    [vad]="livekit/plugins/localtts/vad.py|fork|tests/test_vad.py|*.x__check__* *.x__rms_dbfs__* *.x__mono__* *xǁ_SpeechBufferǁ* *xǁVADStreamǁ_advance_turn__*"
    [vad_features]="livekit/plugins/localtts/vad_features.py|fork|tests/test_vad.py tests/test_vad_noise.py"
    [auth]="localtts_agent/service/auth.py|forkserver|tests/test_service_guards.py"
    [middleware]="localtts_agent/service/middleware.py|forkserver|tests/test_service_guards.py tests/test_service_limits.py"
    [xtts_vocoder]="livekit/plugins/localtts/engines/xtts_vocoder.py|fork|tests/test_xtts_windows.py"
    [chatterbox_windows]="livekit/plugins/localtts/engines/chatterbox_s3gen.py|fork|tests/test_chatterbox_windows.py|*xǁVocoderStreamǁchunk_ready__* *xǁVocoderStreamǁrender_next__* *xǁVocoderStreamǁtokens_needed_for_next_chunk__* *xǁVocoderStreamǁfinish__*"
    [tts]="livekit/plugins/localtts/tts.py|forkserver|tests/test_pcm_path.py|*.x__to_pcm16__* *.xǁ_ReadAheadǁ*"
    [engine_calls]="livekit/plugins/localtts/engine_calls.py|forkserver|tests/test_engine_calls.py"
    [clip]="livekit/plugins/localtts/voices/audio.py|fork|tests/test_clip_validation.py|*.x_prepare_clip__*"
    [conditioning]="livekit/plugins/localtts/voices/conditioning.py|forkserver|tests/test_voices.py::test_preload_many_then_second_start_hits_the_cache tests/test_voices.py::test_changed_model_revision_recomputes tests/test_voices.py::test_concurrent_requests_share_one_computation tests/test_voices.py::test_a_changed_voice_never_gets_its_old_clips_conditioning tests/test_voices.py::test_unusable_cached_conditioning_is_recomputed tests/test_voices.py::test_an_engine_is_handed_no_more_reference_than_it_reads tests/test_voices.py::test_changes_reach_a_second_instance|*.x_conditioning_key__* *xǁConditioningCacheǁget__* *xǁConditioningCacheǁready__* *xǁConditioningCacheǁforget__* *xǁConditioningCacheǁ_load_or_compute__*"
)

module="${1:-}"
if [ -z "$module" ] || [ -z "${modules[$module]:-}" ]; then
    echo "usage: bash tests/mutation.sh MODULE [mutant-name glob ...]" >&2
    echo "modules: ${!modules[*]}" >&2
    exit 2
fi
shift
IFS='|' read -r target isolation selection functions <<<"${modules[$module]}"
selection="${MUTATION_TESTS:-$selection}"
# mutant-name globs given on the command line replace the module's own
[ "$#" -gt 0 ] || { [ -z "$functions" ] || read -r -a globs <<<"$functions"; }
[ "$#" -eq 0 ] || globs=("$@")

stage="build/mutation/$module"
rm -rf "$stage"
mkdir -p "$stage/livekit/plugins"
cp -r plugins/livekit/plugins/localtts "$stage/livekit/plugins/"
cp -r agent/localtts_agent tests voices "$stage/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +

toml_list() { printf '"%s", ' "$@" | sed 's/, $//'; }
# a forkserver run sets the session's fixtures up again for every mutant (a Piper load, a
# PostgreSQL server): mutmut's default limit, 15 x the tests' own time, would stop them
# while they set up and count a timeout as a kill; with forkserver a mutant may take the
# set-up (20 s) plus 3 x the tests' time before it counts as hung
timeouts=""
[ "$isolation" != forkserver ] || timeouts=$'timeout_constant = 20.0\ntimeout_multiplier = 3.0'

# shellcheck disable=SC2086  # the targets and the selection are lists of paths
{
    # the repository's pytest settings, imports from the stage's root
    awk '/^\[tool.pytest.ini_options\]/{on=1; print; next} /^\[/{on=0} on' pyproject.toml |
        sed 's/^pythonpath = .*/pythonpath = ["."]/'
    cat <<EOF

[tool.mutmut]
source_paths = ["livekit/plugins/localtts", "localtts_agent"]
only_mutate = [$(toml_list $target)]
also_copy = ["voices"]
pytest_add_cli_args_test_selection = [$(toml_list $selection)]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]
process_isolation = "$isolation"
$timeouts
use_git_change_detection = false
EOF
} >"$stage/pyproject.toml"

cd "$stage"
export TMPDIR="${TMPDIR:-$(mktemp -d)}"
mutmut="$root/.venv/bin/mutmut"
echo "mutmut: $module, tests: $selection (progress: $stage/run.log)"
# the log keeps mutmut's progress line; a failed clean run shows there
nice -n 19 "$mutmut" run --max-children "${MUTATION_JOBS:-2}" ${globs[@]+"${globs[@]}"} >run.log 2>&1 || {
    tr '\r' '\n' <run.log | tail -40
    exit 1
}
"$mutmut" export-cicd-stats >/dev/null
"$root/.venv/bin/python" - "$module" <<'EOF'
import json
import sys

s = json.load(open("mutants/mutmut-cicd-stats.json"))
killed = s["killed"] + s["timeout"]
# checked mutants only: a run limited to some functions leaves the others unchecked
checked = killed + s["survived"] + s["no_tests"] + s["suspicious"] + s["segfault"]
print(f"{sys.argv[1]}: {killed}/{checked} killed ({100 * killed / max(checked, 1):.1f} %), "
      f"survived {s['survived']}, no tests {s['no_tests']}")
EOF
"$mutmut" results | grep -v ": killed$\|: not checked$" || true
