#!/usr/bin/env bash
# Run on a machine with package-index access, before a GPU session: downloads into .whl/ (git-ignored) the wheels
# that benchmarks/gpu_check.sh installs on an offline GPU machine that has torch, transformers, accelerate and peft
# but neither trl nor bitsandbytes:
#   * trl 1.16.0 and bitsandbytes 0.50.2 (CUDA x86-64 build), always installed there;
#   * datasets and its small pure-Python/tiny binary requirements (dill, multiprocess, xxhash), installed there only
#     when the machine has no usable `datasets` (trl 1.16 needs datasets >= 4.7). pyarrow and pandas, which
#     datasets and trl also import, are too large to carry (about 55 MB): gpu_check.sh stops with a clear message
#     if the machine lacks them.
# The .whl/ folder must stay well under the 64 MiB the device tool carries; the script prints its size.
# Usage: bash benchmarks/fetch_gpu_wheels.sh   (PY_VERSION=3.12 by default: the GPU machine's Python)
set -euo pipefail
cd "$(dirname "$0")/.."

PY_VERSION="${PY_VERSION:-3.12}"
dest=.whl
mkdir -p "$dest"

download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dest" "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}

download trl==1.16.0 bitsandbytes==0.50.2
download datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0

echo "trl 1.16.0 requires (extras left out):"
unzip -p "$dest"/trl-1.16.0-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^Requires-Dist: /  /'
echo
ls -l "$dest" | awk 'NR > 1 {printf "  %6.1f MB  %s\n", $5 / 1e6, $9}'
total=$(du -sb "$dest" | cut -f1)
echo "total: $(awk -v b="$total" 'BEGIN {printf "%.1f MB", b / 1e6}')"
if [ "$total" -gt 60000000 ]; then
    echo "WARNING: .whl/ is over 60 MB; remove stale wheels (rm -rf .whl) and fetch again." >&2
    exit 1
fi
