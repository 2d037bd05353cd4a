#!/usr/bin/env bash
# `make test-gui`: `tools/infer.py --show` in a real OpenCV window on a virtual X server (not part of CI).
# Installs what is missing: Debian xvfb, xdotool and x11-apps (xwd, for screenshots) through apt-get;
# creates (or reuses) .venv-gui, a venv that sees the system site-packages (Paddle, this package) and adds
# PyPI opencv-python (the GUI build; its cv2 shadows the system's opencv-python-headless); starts Xvfb on a
# free display, runs the tests marked `gui` under tests/gui, and stops Xvfb on exit.
# Extra arguments go to pytest, e.g. `bash tests/gui/run.sh -k esc -x`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-gui}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_packages=()
command -v Xvfb >/dev/null 2>&1 || apt_packages+=(xvfb)
command -v xdotool >/dev/null 2>&1 || apt_packages+=(xdotool)
command -v xwd >/dev/null 2>&1 || apt_packages+=(x11-apps)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "installing ${apt_packages[*]} (apt-get, once)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (system site-packages visible, so Paddle is shared)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
# The GUI wheel, same version as the system's headless one when PyPI has it, else same major.minor.
gui_cv2_ok() {  # the "GUI:" line of the build information names a backend (QT5, GTK3, ...), not NONE
    "$VENV/bin/python" -c "import cv2, re, sys; m = re.search(r'^ *GUI: *(\S+)', cv2.getBuildInformation(), re.M); sys.exit(not m or m.group(1) == 'NONE')" 2>/dev/null
}
if ! "$VENV/bin/python" -m pip show -q opencv-python >/dev/null 2>&1; then
    headless="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('opencv-python-headless'))" 2>/dev/null || true)"
    echo "installing opencv-python ${headless:+(matching opencv-python-headless $headless) }into $VENV (once)"
    if [ -n "$headless" ]; then
        "$VENV/bin/python" -m pip install -q "opencv-python==$headless" ||
            "$VENV/bin/python" -m pip install -q "opencv-python==$(echo "$headless" | cut -d. -f1,2).*"
    else
        "$VENV/bin/python" -m pip install -q opencv-python
    fi
fi
# Shared libraries the GUI wheel loads (libGL, GLib) that a slim image may lack.
if ! "$VENV/bin/python" -c "import cv2" 2>/dev/null; then
    echo "cv2 does not import in $VENV; installing libgl1 and libglib2.0-0"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgl1 libglib2.0-0
fi
if ! gui_cv2_ok; then
    echo "error: cv2 in $VENV has no GUI backend (is opencv-python installed there?)" >&2
    "$VENV/bin/python" -c "import cv2; print(cv2.__file__)" >&2 || true
    exit 1
fi

# A free display number: no lock file and no socket.
display=""
for n in $(seq 90 140); do
    if [ ! -e "/tmp/.X$n-lock" ] && [ ! -e "/tmp/.X11-unix/X$n" ]; then
        display=":$n"
        break
    fi
done
if [ -z "$display" ]; then
    echo "error: no free X display number in :90-:140" >&2
    exit 1
fi
xvfb_log="$(mktemp -t xvfb.XXXXXX.log)"
Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >"$xvfb_log" 2>&1 &
xvfb_pid=$!
cleanup() {
    kill "$xvfb_pid" 2>/dev/null || true
    wait "$xvfb_pid" 2>/dev/null || true
    rm -f "$xvfb_log"
}
trap cleanup EXIT
export DISPLAY="$display"
for _ in $(seq 1 100); do  # up to 10 s for the server to accept connections
    if xdotool getdisplaygeometry >/dev/null 2>&1; then break; fi
    if ! kill -0 "$xvfb_pid" 2>/dev/null; then
        echo "error: Xvfb $display exited:" >&2
        cat "$xvfb_log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "Xvfb on DISPLAY=$DISPLAY ($(xdotool getdisplaygeometry))"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Not exec: the EXIT trap has to stop Xvfb after pytest.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -m gui tests/gui "$@"
