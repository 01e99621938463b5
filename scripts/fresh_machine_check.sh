#!/usr/bin/env bash
# Fresh-machine check: clone this repository's committed HEAD into an empty folder and run the
# README's commands there, from nothing installed by hand (run.sh makes its own .venv), as CI does.
#
#   bash scripts/fresh_machine_check.sh              # `bash run.sh test` in a fresh clone
#   bash scripts/fresh_machine_check.sh --reproduce  # then `bash run.sh reproduce` too (1.5-2 hours)
#   bash scripts/fresh_machine_check.sh --reproduce-only  # `bash run.sh reproduce` alone, timed
#
# The authors' released logs are laid beside the clone as ../shared/released-logs when this
# checkout has them there (as on CI); without them their tests skip and notebook 01 fails.
# Prints each command's wall time; exits non-zero at the first failure. KEEP=1 keeps the folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/premem-fresh.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/premem"
if [ -d "$repo/../shared/released-logs" ]; then
    mkdir -p "$work/shared" && ln -s "$(cd "$repo/../shared/released-logs" && pwd)" "$work/shared/released-logs"
fi
echo "fresh clone of $(git -C "$repo" rev-parse --short HEAD) in $work/premem"
cd "$work/premem"
unset PREMEM_RELEASED_LOGS PREMEM_ROOT VIRTUAL_ENV  # nothing from this shell leaks in

timed() {
    local start=$SECONDS
    "$@"
    echo "== '$*' passed in $((SECONDS - start)) s"
}

[ "${1:-}" = "--reproduce-only" ] || timed bash .ci/run  # = bash run.sh test, the README's test command
if [ "${1:-}" = "--reproduce" ] || [ "${1:-}" = "--reproduce-only" ]; then
    timed bash run.sh reproduce
    test -s figures/claims.md || { echo "reproduce wrote no figures/claims.md" >&2; exit 1; }
    git status --short
fi
echo "fresh-machine check passed"
