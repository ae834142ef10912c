#!/usr/bin/env bash
# ./build.sh        create .venv, install ksbuild, build the example site into out/
# ./build.sh test   the same install plus test tools (and, as root, the Debian packages the
#                   boot tests need), then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

venv=${KSBUILD_VENV:-.venv}
python=${PYTHON:-python3}

install_project() {
    local extra=$1
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$venv/bin/python" -m pip install -q -e ".$extra"
    # pip byte-compiles what it copies, not an editable install's own folder. Where
    # PYTHONDONTWRITEBYTECODE is set (this machine, many container images) each command would
    # compile the modules it imports again: ~0.25 s of a one-host rebuild of a large fleet.
    "$venv/bin/python" -m compileall -q builder
}

debian_packages() {
    grep -v '^#' tests/debian-packages.txt | tr -s ' \n' ' '
}

install_debian_packages() {
    local missing=()
    for pkg in $(debian_packages); do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "build.sh: the tests need these Debian packages: ${missing[*]}" >&2
        echo "build.sh: install them as root (apt-get install ${missing[*]}) and run again" >&2
        exit 1
    fi
    echo "build.sh: installing Debian packages: ${missing[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

case "${1:-build}" in
    build)
        install_project ""
        "$venv/bin/ksbuild" build kickstarts/site.yaml -o out
        ;;
    test)
        shift
        install_debian_packages
        install_project "[test]"
        "$venv/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./build.sh [build | test [PYTEST ARGS...]]" >&2
        exit 2
        ;;
esac
