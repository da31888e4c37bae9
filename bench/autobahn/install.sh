#!/usr/bin/env bash
# Idempotent install of the Autobahn WebSocket testsuite (wstest, Python 2.7 code)
# into a self-contained directory, plus a launcher that works without a virtualenv.
#
#   usage: install.sh [DEST]        DEST defaults to <repo>/target/autobahn/pkgs (git-ignored)
#
# env:  PY2=/path/to/python2.7               (default: newest ~/.pyenv/versions/2.7.*)
#       AUTOBAHN_SUITE_VERSION=25.10.1       (PyPI autobahntestsuite version; 0.8.2 also py2)
#       FORCE=1                               reinstall even if DEST is complete
#       PIP_TIMEOUT=900                       hard bound (s) for each pip step
#
# Network: only PyPI (pip), in steps 2 and 3 below; nothing at run time.
# Time (2 cores): ~25-35 s cold (no pip cache; wsaccel compiled from source with
# Cython), ~10 s warm (pip cache), <1 s when already installed.
#
# Result: DEST/            pip --target tree (autobahntestsuite, autobahn 0.10.9, Twisted 19.10 ...)
#         DEST/.buildtools  Cython~=3.0.0 + wheel<0.38, only needed to build wsaccel
#         DEST/wstest       launcher: use this, NOT DEST/bin/wstest (see pitfall below)
#         DEST/.installed   stamp (suite version), written only after a successful self-test
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEST=$(realpath -m -- "${1:-$REPO/target/autobahn/pkgs}")   # absolute: the launcher bakes it in
VERSION=${AUTOBAHN_SUITE_VERSION:-25.10.1}
PIP_TIMEOUT=${PIP_TIMEOUT:-900}
# pip 19.2 (last for 2.7 here) ignores PIP_NO_PYTHON_VERSION_WARNING; PYTHONWARNINGS silences its banner
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONWARNINGS=ignore
unset PYTHONPATH PYTHONHOME PIP_PREFIX PIP_TARGET PIP_USER || true
T0=$(date +%s)

# ---- 1. find Python 2.7 ------------------------------------------------------
if [[ -z "${PY2:-}" ]]; then
  for c in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7.* 2>/dev/null | sort -V -r); do
    [[ -x "$c/bin/python2.7" ]] && { PY2="$c/bin/python2.7"; break; }
  done
fi
if [[ -z "${PY2:-}" ]] && command -v python2.7 >/dev/null; then PY2=$(command -v python2.7); fi
if [[ -z "${PY2:-}" || ! -x "$PY2" ]]; then
  echo "install.sh: no python2.7 found (try: pyenv install 2.7.18, or set PY2=...)" >&2; exit 2
fi
"$PY2" -c 'import sys; assert sys.version_info[:2] == (2, 7), sys.version' || {
  echo "install.sh: $PY2 is not Python 2.7" >&2; exit 2; }

print_versions() {
  echo "python2:            $("$PY2" -c 'import sys; print(sys.version.split()[0])') ($PY2)"
  "$PY2" -s -c '
import sys, site; d = sys.argv[1]; sys.path.insert(0, d); site.addsitedir(d)
import autobahntestsuite, autobahn, twisted, wsaccel, ujson
import wsaccel.utf8validator, wsaccel.xormask, zope.interface, twisted.internet.epollreactor
print("autobahntestsuite:  %s" % autobahntestsuite.__version__)
print("autobahn:           %s" % autobahn.__version__)
print("twisted:            %s" % twisted.__version__)
print("wsaccel:            %s (C accelerators: %s)" % (wsaccel.__version__, ", ".join(m.__file__.split("/")[-1] for m in (wsaccel.utf8validator, wsaccel.xormask))))
print("ujson:              %s" % ujson.__version__)
' "$DEST"
  echo "launcher:           $DEST/wstest"
}

# ---- 0. already installed? ---------------------------------------------------
if [[ -z "${FORCE:-}" && -f "$DEST/.installed" && "$(cat "$DEST/.installed")" == "$VERSION" \
      && -x "$DEST/wstest" ]] && "$DEST/wstest" -a >/dev/null 2>&1; then
  echo "install.sh: autobahntestsuite $VERSION already installed in $DEST (FORCE=1 to reinstall)"
  print_versions
  exit 0
fi

# Only ever wipe a directory that this script created (marker file), never an arbitrary one.
if [[ -d "$DEST" && -n "$(ls -A "$DEST" 2>/dev/null)" ]]; then
  if [[ -f "$DEST/.autobahn-harness" ]]; then
    echo "install.sh: removing incomplete/old install in $DEST"
    rm -rf -- "$DEST"
  else
    echo "install.sh: $DEST exists, is not empty and was not made by install.sh; refusing to touch it" >&2
    exit 2
  fi
fi
mkdir -p "$DEST"
touch "$DEST/.autobahn-harness"
BT="$DEST/.buildtools"

# ---- 2. build tools for wsaccel (network: PyPI) -------------------------------
# The newest Cython (3.1+) no longer supports Python 2.7 and wheel>=0.38 dropped it too;
# pip's default build isolation would fetch those, so pin them and disable isolation.
echo "install.sh: [1/3] build tools (Cython~=3.0.0, wheel<0.38) -> $BT"
timeout "$PIP_TIMEOUT" "$PY2" -m pip install -q --target "$BT" 'Cython~=3.0.0' 'wheel<0.38'

# ---- 3. the suite itself (network: PyPI) --------------------------------------
# --target (not --prefix): a flat tree usable via sys.path. Deps are pinned by the sdist
# (autobahn[accelerate,twisted]==0.10.9, Twisted==19.10.0, cryptography==3.3.2 ...);
# pip 19.2 on 2.7 honours Requires-Python, so it picks wsaccel 0.6.6 / ujson 2.0.3.
echo "install.sh: [2/3] autobahntestsuite==$VERSION -> $DEST (compiles wsaccel)"
PYTHONPATH="$BT" PATH="$BT/bin:$PATH" timeout "$PIP_TIMEOUT" \
  "$PY2" -m pip install -q --no-build-isolation --target "$DEST" "autobahntestsuite==$VERSION"

# ---- 4. launcher --------------------------------------------------------------
# Pitfall: zope.interface is a namespace package installed via a *-nspkg.pth file, and
# .pth files are NOT processed for PYTHONPATH entries, so `PYTHONPATH=DEST DEST/bin/wstest`
# fails with "No module named zope.interface" (Twisted import). site.addsitedir() does
# process them, hence this launcher. -s: ignore ~/.local site-packages.
cat > "$DEST/wstest" <<EOF
#!/bin/sh
# generated by install.sh: run autobahntestsuite's wstest from the --target tree
unset PYTHONPATH PYTHONHOME
exec "$PY2" -s -c 'import sys, site
d = sys.argv.pop(1); sys.path.insert(0, d); site.addsitedir(d); sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run
sys.exit(run())' "$DEST" "\$@"
EOF
chmod +x "$DEST/wstest"

# ---- 5. self-test + stamp ------------------------------------------------------
echo "install.sh: [3/3] self-test"
if "$DEST/wstest" -a 2>&1 | grep -qi "cannot use Epoll"; then
  echo "install.sh: launcher self-test failed (zope/twisted import)" >&2; exit 1
fi
print_versions
echo "$VERSION" > "$DEST/.installed"
echo "install.sh: done in $(( $(date +%s) - T0 )) s"
