# Shared by scripts/test and scripts/daggyd (sourced, not run): a virtualenv in .venv with
# daggy installed in editable mode, plus Debian packages installed on demand.
# Everything is idempotent, and quick when there is nothing to do.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DAGGY_VENV:-$REPO/.venv}"
_APT_UPDATED=0

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        say "root privileges are needed to run: $*"
        return 1
    fi
}

# apt_install PACKAGE...: install the Debian packages that are not installed yet.
apt_install() {
    local package missing=()
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        say "please install these packages: ${missing[*]} (apt-get not found)"
        return 1
    fi
    say "installing Debian packages: ${missing[*]}"
    if [ "$_APT_UPDATED" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" </dev/null
}

_python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && _python_ok "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    say "Python 3.11 or newer is needed (python3 not found or too old)"
    return 1
}

# ensure_venv: create $VENV unless it already holds a working Python >= 3.11.
ensure_venv() {
    if [ -x "$VENV/bin/python" ] && _python_ok "$VENV/bin/python" \
        && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        return 0
    fi
    local python version
    python="$(find_python)"
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately, as python3.X-venv.
        version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        apt_install "python${version}-venv"
    fi
    say "creating $VENV"
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
}

# ensure_installed EXTRAS: pip install -e ".[EXTRAS]" into $VENV unless pyproject.toml is
# unchanged since the last install with those extras (or a superset named the same way).
ensure_installed() {
    local extras="$1" digest stamp="$VENV/.daggy-installed"
    digest="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && grep -qx "$digest $extras" "$stamp"; then
        return 0
    fi
    say "installing daggy${extras:+[$extras]} into $VENV (editable)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --editable "$REPO${extras:+[$extras]}"
    # Any earlier install line is stale now; keep this one (plus "" which it implies).
    { echo "$digest $extras"; echo "$digest "; } | sort -u >"$stamp"
}
