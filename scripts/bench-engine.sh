#!/usr/bin/env bash
# make bench-engine: kdbt's engine figures, each measured side by side in one run.
# Each figure is one section function below; sections run in the order of SECTIONS.
# To add a figure, define a section_NAME function and append NAME to SECTIONS.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
cd "$KDBT_ROOT"

BUSYBOX="${BUSYBOX:-/bin/busybox}"
[ -r "$BUSYBOX" ] || die "$BUSYBOX is missing: install the Debian package busybox-static (make setup)"

# Translation throughput (guest instructions translated per second) and code-cache
# expansion (cache bytes / guest bytes) over busybox's whole .text, per call/ret policy.
section_translation() {
    cargo build --quiet --release -p kdbt-host --bin kdbt-bench-engine || die "building kdbt-bench-engine failed"
    "$KDBT_ROOT/target/release/kdbt-bench-engine" "$BUSYBOX"
}

# Translated / native wall time of the user-check busybox workload, per call/ret policy
# (scripts/bench-busybox.sh, owned with make user-check).
section_busybox() {
    bash "$here/bench-busybox.sh"
}

SECTIONS=(translation busybox)

for s in "${SECTIONS[@]}"; do
    echo "== $s"
    "section_$s"
done
