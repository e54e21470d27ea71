#!/usr/bin/env bash
# Times `bootyard image pull oci-layout:` against `umoci unpack`, `tar -xzf` (gzip layers,
# one after another) and `tar -xf` of the same layers already decompressed (the filesystem
# floor), on the same generated image, interleaved, in one run, and prints the ratios.
#
# Every contender extracts into a fresh directory of a freshly made ext4 filesystem
# (loop-mounted when we are root), and nothing is deleted until the end: on ext4, creating
# files right after deleting others is several times slower for minutes, which would turn
# the comparison into a measurement of the order of the runs.
#
# usage: benches/compare.sh [ROUNDS]   (env: BENCH_DIR, default target/bench)
set -euo pipefail
rounds=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${BENCH_DIR:-$root/target/bench}
bin=$root/target/release/bootyard
mkdir -p "$bench"

need() { command -v "$1" >/dev/null || { echo "compare.sh: $1 is missing (apt-get install $2)" >&2; exit 1; }; }
need umoci umoci; need tar tar; need gzip gzip; need python3 python3; need mkfs.ext4 e2fsprogs

(cd "$root" && cargo build --release --quiet --bin bootyard)

img=$bench/image
if [ ! -f "$img/index.json" ]; then
  echo "generating the benchmark image (Debian-like, gzip layers) in $img"
  "$bin" image sample --scale bench --compression gzip --tag bench --out "$img" >/dev/null
fi

# Layer blobs in order, and their decompressed tars for the tar -xf floor.
mapfile -t layers < <(python3 - "$img" <<'PY'
import json, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
m = [x for x in idx["manifests"] if x.get("annotations", {}).get("org.opencontainers.image.ref.name") == "bench"][0]
man = json.load(open(f"{d}/blobs/sha256/{m['digest'].split(':')[1]}"))
for l in man["layers"]:
    print(l["digest"].split(":")[1], l["mediaType"])
PY
)
plain=$bench/plain
mkdir -p "$plain"
i=0
for l in "${layers[@]}"; do
  set -- $l
  if [ ! -f "$plain/$i.tar" ]; then
    case $2 in *gzip) gzip -dc "$img/blobs/sha256/$1" > "$plain/$i.tar" ;; *) cp "$img/blobs/sha256/$1" "$plain/$i.tar" ;; esac
  fi
  i=$((i + 1))
done
uncompressed=$(cat "$plain"/*.tar | wc -c)

work=$bench/fs
mkdir -p "$work"
shm=${BENCH_SHM:-/dev/shm}
fsimg=$shm/bootyard-bench-fs.img
mounted=""
cleanup() { cd "$bench"; if [ -n "$mounted" ]; then umount "$work" || true; fi; rm -f "$fsimg"; }
trap cleanup EXIT
# A fresh ext4 per round, backed by RAM: no earlier deletions, no host writeback in the way.
fresh_fs() {
  if [ "$(id -u)" != 0 ]; then
    echo "note: not root, so no fresh filesystem per round; results may be skewed by earlier deletions" >&2
    return
  fi
  if [ -n "$mounted" ]; then umount "$work"; rm -f "$fsimg"; mounted=""; fi
  truncate -s $(( uncompressed * 7 / 1000000 + 512 ))M "$fsimg"
  mkfs.ext4 -q -F "$fsimg"
  mount -o loop "$fsimg" "$work"
  mounted=yes
}

now() { date +%s.%N; }
declare -A times
run() { # name, command...
  local name=$1; shift
  sync
  local s e
  s=$(now); "$@" >/dev/null 2>&1; e=$(now)
  times[$name]+="$(python3 -c "print($e-$s)") "
}
by() { "$bin" image pull "oci-layout:$img:bench" --out "$1" --cache "$bench/cache"; }
byv() { "$bin" image pull "oci-layout:$img:bench" --out "$1" --cache "$bench/cache" --verify-blobs; }
tarz() { mkdir "$1"; for l in "${layers[@]}"; do set -- "$1" $l; case $3 in *gzip) tar -xzpf "$img/blobs/sha256/$2" -C "$1" ;; *) tar -xpf "$img/blobs/sha256/$2" -C "$1" ;; esac; done; }
tarx() { mkdir "$1"; for t in $(ls "$plain"/*.tar | sort -V); do tar -xpf "$t" -C "$1"; done; }
um() { umoci unpack --image "$img:bench" "$1"; }

echo "image: $(du -sh "$img/blobs" | cut -f1) compressed, $((uncompressed / 1000000)) MB uncompressed, ${#layers[@]} layers; $rounds rounds"
for r in $(seq "$rounds"); do
  fresh_fs
  # Rotate the order each round so no contender always runs first.
  order=(bootyard tar-xf tar-xzf umoci bootyard-verify)
  for k in $(seq $((r % 5))); do order=("${order[@]:1}" "${order[0]}"); done
  for c in "${order[@]}"; do
    case $c in
      bootyard) run bootyard by "$work/by-$r" ;;
      bootyard-verify) run bootyard-verify byv "$work/bv-$r" ;;
      tar-xf) run tar-xf tarx "$work/tx-$r" ;;
      tar-xzf) run tar-xzf tarz "$work/tz-$r" ;;
      umoci) run umoci um "$work/um-$r" ;;
    esac
  done
done

python3 - "$uncompressed" "${times[bootyard]}" "${times[tar-xf]}" "${times[tar-xzf]}" "${times[umoci]}" "${times[bootyard-verify]}" <<'PY'
import statistics, sys
mb = int(sys.argv[1]) / 1e6
names = ["bootyard", "tar -xf (plain)", "tar -xzf", "umoci unpack", "bootyard --verify-blobs"]
med = {}
for n, s in zip(names, sys.argv[2:]):
    v = [float(x) for x in s.split()]
    med[n] = statistics.median(v)
    print(f"{n:18} median {med[n]:6.2f} s  ({mb / med[n]:5.0f} MB/s)  runs: {' '.join(f'{x:.2f}' for x in v)}")
b = med["bootyard"]
print(f"umoci / bootyard           = {med['umoci unpack'] / b:4.2f}x  (target >= 3)")
print(f"tar -xzf / bootyard        = {med['tar -xzf'] / b:4.2f}x  (target >= 1.5)")
print(f"bootyard vs tar -xf floor  = {med['tar -xf (plain)'] / b * 100:4.0f}%  (target >= 85%)")
print(f"(with --verify-blobs, which also re-hashes every compressed blob: {med['tar -xf (plain)'] / med['bootyard --verify-blobs'] * 100:.0f}% of the floor)")
PY
