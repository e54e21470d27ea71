#!/usr/bin/env bash
# Boot benchmarks under TCG (never assertions in tests): the wall time of the busybox
# `ab-rollback` scenario (install, two upgrades on the node, three panicking tries of a
# broken image, recovery; target under 90 s) and, for each flavor, QEMU start to
# `boot-complete` of every boot that completes. Prints the scenario runner's own lines.
#
# usage: benches/boot.sh [busybox|debian|all]   (default: all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${BOOTYARD_GUEST_AGENT:?build it first: ./x guest-agent}"
bin=$root/target/release/bootyard
flavors=${1:-all}
for f in busybox debian; do
  [ "$flavors" = all ] || [ "$flavors" = "$f" ] || continue
  echo "== ab-rollback, $f flavor, TCG"
  "$bin" scenario run scenarios/ab-rollback.toml --flavor "$f" --accel tcg \
    --agent "$BOOTYARD_GUEST_AGENT" --cache "$root/target/test-assets/deb" \
    --workdir "$root/target/bench/boot"
done
