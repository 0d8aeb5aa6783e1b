#!/usr/bin/env bash
# Prepares, on a machine with network, the Python wheels that an offline GPU machine lacks, so that
# mclr_jax runs there beside the machine's own JAX (docs/performance.md, "Prepare here").
#
#   bash experiments/gpu_carry.sh            # writes .whl/ (git-ignored) and prints its size
#   bash experiments/gpu_carry.sh DIR
#
# The GPU machine this is written for (Python 3.12, x86-64, no network) has JAX with its CUDA
# plugin, flax, optax, orbax-checkpoint, chex, numpy, scipy, scikit-learn, matplotlib, absl-py,
# etils, PyYAML, packaging, typing-extensions, wrapt and tensorboard, and lacks exactly two of the
# packages that mclr_jax imports: ml_collections (the configs) and clu (metrics). Both are pure
# Python, and everything they require (printed below, from their metadata) is among the packages
# above. TensorFlow and tensorflow-datasets stay behind: the core never imports them.
# The versions are the tested lock's (requirements.txt). There, install with --no-deps into a
# separate folder, which leaves the machine's JAX untouched:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
python="${PYTHON:-python3}"
packages=(clu ml_collections)

pins=()
for name in "${packages[@]}"; do
  pin="$(grep -i "^${name}==" requirements.txt | head -n 1 || true)"
  if [[ -z "$pin" ]]; then
    echo "error: requirements.txt pins no version of ${name}; regenerate the lock (its header" \
         "says how) or pass the version by hand." >&2
    exit 1
  fi
  pins+=("$pin")
done

rm -rf "$dest"
mkdir -p "$dest"
# Pure-Python wheels: any platform, tagged for Python 3.12 (the GPU machine's).
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation py -d "$dest" "${pins[@]}" 2>&1 \
  | grep -v "is ignored" || true

count=$(find "$dest" -type f -name '*.whl' | wc -l)
if [[ "$count" -ne "${#packages[@]}" ]]; then
  echo "error: expected ${#packages[@]} wheels in $dest, found $count; is the package index" \
       "reachable?" >&2
  exit 1
fi
for wheel in "$dest"/*.whl; do
  echo "$(basename "$wheel") requires:" $("$python" - "$wheel" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
  meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
  reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines()
          if l.startswith("Requires-Dist:") and "extra ==" not in l]
print(", ".join(reqs))
EOF
)
done
bytes=$(du -sb "$dest" | cut -f1)
echo "$dest: $count wheels, $((bytes / 1024)) KiB (the working tree and the carried paths must" \
     "stay under 64 MiB together)"
