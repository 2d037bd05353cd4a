#!/usr/bin/env bash
# `make test-reference`: parity of our models with the reference implementations (not part of CI).
#
# Builds (or reuses) everything the tests in tests/reference need, then runs them:
#   .venv-ref    venv seeing the system site-packages (Paddle, this package) + torch 2.14.1, torchvision 0.29.1,
#                timm, detectron2 (built from source, CPU), AdelaiDet (source tree on sys.path through a .pth
#                file; its C++ extension is not built), opencv-python-headless, scikit-image.
#   .venv-ppdet  separate venv for PaddleDetection (numpy<2, paddlepaddle 3.3.1, its requirements); tests reach it
#                through tests/reference/ppdet_worker.py (see conftest.py).
#   .ref/src/    the reference sources at their pinned commits, exported from bare git repositories.
#   .ref/stamps/ one file per finished step (content = what it was built from): a second run skips finished
#                steps; a changed pin or package list rebuilds that step.
#
# Sources: each comes from a bare git directory holding the pinned commit (default: the `fetch` tool's mirrors
# under /work/.mirror) or from an already-extracted tree at that commit:
#   DETECTRON2_GIT / DETECTRON2_SRC, ADELAIDET_GIT / ADELAIDET_SRC, PADDLEDET_GIT / PADDLEDET_SRC.
#
# Usage: bash tests/reference/run.sh [--setup-only] [pytest args...], e.g. `run.sh -k adelaidet -x` or
# `run.sh tests/reference/test_reference_detections.py` (--setup-only: build the environments, run nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-ref}"
PPDET_VENV="${PPDET_VENV:-.venv-ppdet}"
REF="$(realpath -m "${REF_DIR:-.ref}")"
export MAX_JOBS="${MAX_JOBS:-2}"

DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
ADELAIDET_COMMIT=36721221eb572256206e60df6e9095ed00b2e08c
PADDLEDET_COMMIT=666f597fd00d3157e84dd9fb2dd3f40bf9918ebc
DETECTRON2_GIT="${DETECTRON2_GIT:-/work/.mirror/facebookresearch+detectron2/repo}"
ADELAIDET_GIT="${ADELAIDET_GIT:-/work/.mirror/aim-uofa+AdelaiDet/repo}"
PADDLEDET_GIT="${PADDLEDET_GIT:-/work/.mirror/PaddlePaddle+PaddleDetection/repo}"

REF_PACKAGES=("torch==2.14.1" "torchvision==0.29.1" timm opencv-python-headless scikit-image)
PPDET_PACKAGES=("paddlepaddle==3.3.1" "numpy<2" opencv-python-headless PyYAML pycocotools scipy typeguard requests
    tqdm terminaltables shapely scikit-learn "pandas<2.3" six imageio scikit-image matplotlib)
PPDET_NODEPS=("imgaug==0.4.0")  # `import ppdet` imports it; its own requirements would pull numpy 2

SETUP_ONLY=0
if [ "${1:-}" = "--setup-only" ]; then
    SETUP_ONLY=1
    shift
fi

log() { echo "[test-reference $(date -u +%H:%M:%S)] $*"; }
die() {
    echo "test-reference: error: $*" >&2
    exit 2
}
stamp_ok() { [ -f "$REF/stamps/$1" ] && [ "$(cat "$REF/stamps/$1")" = "$2" ]; }
BUILT=0  # set when this run built or changed something: then the environments' imports are checked
stamp_set() {
    mkdir -p "$REF/stamps" && printf '%s' "$2" >"$REF/stamps/$1"
    BUILT=1
}

# export_source NAME COMMIT GIT_DIR SRC_OVERRIDE [pathspec...] -> prints the tree's path
# The tree is .ref/src/NAME-COMMIT (from `git archive`), or SRC_OVERRIDE when that is set (used as is).
export_source() {
    local name="$1" commit="$2" git_dir="$3" override="$4" var="$5"
    shift 5
    if [ -n "$override" ]; then
        [ -d "$override" ] || die "${var%_GIT}_SRC=$override is not a directory"
        (cd "$override" && pwd)
        return
    fi
    local dest="$REF/src/$name-${commit:0:12}"
    if stamp_ok "src-$name" "$commit" && [ -d "$dest" ]; then
        echo "$dest"
        return
    fi
    if ! git --git-dir="$git_dir" cat-file -e "$commit^{commit}" 2>/dev/null; then
        die "$name source missing: $var=$git_dir is not a git directory holding commit $commit.
  Provide it with $var=<bare or normal .git dir containing that commit> (e.g. a clone of the public repository,
  then \`git fetch origin $commit\`), or ${var%_GIT}_SRC=<a tree already extracted at that commit>."
    fi
    log "exporting $name@${commit:0:12} from $git_dir into $dest" >&2
    rm -rf "$dest" "$dest.tmp"
    mkdir -p "$dest.tmp"
    mkdir -p "$REF/logs"
    # (git prints an "invalid object" line for an excluded blob missing from the snapshot; that is harmless)
    git --git-dir="$git_dir" archive "$commit" -- "$@" 2>"$REF/logs/export-$name.log" | tar -x -C "$dest.tmp" ||
        die "exporting $name from $git_dir failed: $(cat "$REF/logs/export-$name.log")"
    mv "$dest.tmp" "$dest"
    stamp_set "src-$name" "$commit"
    echo "$dest"
}

pip_in() {  # pip_in VENV args...: quiet pip in that venv, its output kept in .ref/logs
    local venv="$1"
    shift
    mkdir -p "$REF/logs"
    "$venv/bin/python" -m pip install --progress-bar off "$@" >>"$REF/logs/pip-$(basename "$venv").log" 2>&1 ||
        die "pip install $* failed in $venv; see $REF/logs/pip-$(basename "$venv").log"
}

site_packages() { "$1/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }

setup_sources() {
    D2_SRC="$(export_source detectron2 "$DETECTRON2_COMMIT" "$DETECTRON2_GIT" "${DETECTRON2_SRC:-}" DETECTRON2_GIT .)"
    ADET_SRC="$(export_source adelaidet "$ADELAIDET_COMMIT" "$ADELAIDET_GIT" "${ADELAIDET_SRC:-}" ADELAIDET_GIT \
        adet configs)"
    PPDET_SRC="$(export_source paddledet "$PADDLEDET_COMMIT" "$PADDLEDET_GIT" "${PADDLEDET_SRC:-}" PADDLEDET_GIT \
        ppdet configs tools setup.py requirements.txt ':(exclude)ppdet/utils/simfang.ttf')"
}

setup_venv_ref() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV (system site-packages visible, so Paddle and this package are shared)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    fi
    if ! stamp_ok venv-ref-packages "${REF_PACKAGES[*]}"; then
        if ! "$VENV/bin/python" -c "import torch, torchvision, timm, cv2, skimage" 2>/dev/null; then
            log "installing ${REF_PACKAGES[*]} into $VENV (a few minutes, once)"
            pip_in "$VENV" "${REF_PACKAGES[@]}"
        fi
        stamp_set venv-ref-packages "${REF_PACKAGES[*]}"
    fi
    if ! stamp_ok venv-ref-detectron2 "$D2_SRC" || ! "$VENV/bin/python" -c "import detectron2._C" 2>/dev/null; then
        log "building detectron2@${DETECTRON2_COMMIT:0:12} into $VENV (CPU, MAX_JOBS=$MAX_JOBS; minutes, once)"
        # --use-pep517 with --no-build-isolation: without it pip 23 + setuptools 84 isolate the build (no torch)
        pip_in "$VENV" --no-build-isolation --use-pep517 -e "$D2_SRC"
        stamp_set venv-ref-detectron2 "$D2_SRC"
    fi
    # AdelaiDet: its source tree on sys.path (the C++ extension is not built; tests/reference/envs.py stubs adet._C)
    local sp
    sp="$(site_packages "$VENV")"
    if [ "$(cat "$sp/adelaidet-src.pth" 2>/dev/null)" != "$ADET_SRC" ]; then
        printf '%s' "$ADET_SRC" >"$sp/adelaidet-src.pth"
        BUILT=1
    fi
}

setup_venv_ppdet() {
    if [ ! -x "$PPDET_VENV/bin/python" ]; then
        log "creating $PPDET_VENV (own site-packages: PaddleDetection needs numpy<2)"
        "$PYTHON" -m venv "$PPDET_VENV"
    fi
    local want="${PPDET_PACKAGES[*]} | ${PPDET_NODEPS[*]}"
    if ! stamp_ok venv-ppdet-packages "$want"; then
        log "installing PaddleDetection's requirements into $PPDET_VENV (a few minutes, once)"
        pip_in "$PPDET_VENV" "${PPDET_PACKAGES[@]}"
        pip_in "$PPDET_VENV" --no-deps "${PPDET_NODEPS[@]}"
        stamp_set venv-ppdet-packages "$want"
    fi
    local sp
    sp="$(site_packages "$PPDET_VENV")"
    if [ "$(cat "$sp/paddledet-src.pth" 2>/dev/null)" != "$PPDET_SRC" ]; then
        printf '%s' "$PPDET_SRC" >"$sp/paddledet-src.pth"
        BUILT=1
    fi
}

# check_in VENV NAME CODE: run the import check CODE in VENV; its warnings go to .ref/logs/check-NAME.log
check_in() {
    local venv="$1" name="$2" code="$3" out
    out="$("$venv/bin/python" -c "$code" 2>"$REF/logs/check-$name.log")" ||
        die "$venv is incomplete:
$(tail -5 "$REF/logs/check-$name.log")
  (full output: $REF/logs/check-$name.log); remove $REF/stamps/$name-* to rebuild it"
    echo "${out##*$'\n'}"  # its last line (PaddleDetection prints warnings on stdout)
}

check_envs() {
    check_in "$VENV" venv-ref '
import sys
sys.path.insert(0, "tests/reference")
from envs import import_adet
import detectron2, detectron2._C, torch, torchvision, timm
adet = import_adet()
print(f"  {sys.prefix}: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"detectron2 from {detectron2.__path__[0]}, adet from {adet.__path__[0]}")'
    check_in "$PPDET_VENV" venv-ppdet '
import sys, numpy, paddle, ppdet
print(f"  {sys.prefix}: paddle {paddle.__version__}, numpy {numpy.__version__}, ppdet from {ppdet.__path__[0]}")'
}

start=$(date +%s)
setup_sources
setup_venv_ref
setup_venv_ppdet
if [ "$BUILT" = 1 ] || [ "${REF_CHECK:-0}" = 1 ]; then
    check_envs
fi
log "environments ready in $(($(date +%s) - start)) s"
export FCOS_REF_ENVS_READY=1  # conftest.py: a missing environment is an error, not a skip
export FCOS_REF_PPDET_PYTHON="$(realpath -m "$PPDET_VENV")/bin/python"
export FCOS_REF_ADELAIDET_SRC="$ADET_SRC" FCOS_REF_PADDLEDET_SRC="$PPDET_SRC" FCOS_REF_DETECTRON2_SRC="$D2_SRC"
[ "$SETUP_ONLY" = 1 ] && exit 0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# tests/reference unless the arguments name test files or folders themselves
TARGET=(tests/reference)
for arg in "$@"; do
    if [ -e "${arg%%::*}" ]; then
        TARGET=()
        break
    fi
done
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m reference "${TARGET[@]}" "$@"
