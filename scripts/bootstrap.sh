#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned dependencies of one profile: runtime or dev.
# Re-running is cheap: a stamp records which lock file the environment was last synced to, and
# the fused kernels are built only when their source (or compiler, flags, torch) changed.
set -euo pipefail
profile="${1:-runtime}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$root/requirements/$profile.lock"
venv="$root/.venv"
[ -f "$lock" ] || { echo "bootstrap: no lock file $lock" >&2; exit 2; }
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
stamp="$venv/.synced-$profile"
want="$(sha256sum "$lock" "$root/pyproject.toml" | sha256sum | cut -c1-64)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "bootstrap: installing pinned $profile dependencies into .venv (first run takes a few minutes)" >&2
    # torch first and alone, so the CPU wheel is taken rather than a CUDA build pulled in by a range.
    torch_pin="$(grep -E '^torch==' "$lock")"
    "$venv/bin/pip" install --quiet "$torch_pin" 2>&1 | grep -v 'is ignored' >&2 || true
    "$venv/bin/pip" install --quiet -r "$lock" 2>&1 | grep -v 'is ignored' >&2 || true
    "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root" 2>&1 | grep -v 'is ignored' >&2 || true
    "$venv/bin/python" -c "import verinfer, torch" || { echo "bootstrap: install failed" >&2; exit 1; }
    echo "$want" > "$stamp"
fi
# The fused integer kernels are compiled here, once per source, not on a user's first request;
# instant when this machine already has the build. Without a compiler: one warning, torch path.
"$venv/bin/python" -m verinfer.engine.kernel_build
