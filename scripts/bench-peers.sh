#!/usr/bin/env bash
# Builds the peers' own benchmark programs for scripts/bench.sh and prints the
# folder they are in: ~/.cache/rust-eda/peers-KEY (EDA_PEERS_CACHE for another
# place than ~/.cache/rust-eda), KEY a digest of every input below and of the
# compilers, so that a later call, from any clone, reuses them until one changes:
#
#   rdkafka_performance  librdkafka's benchmark tool, from the librdkafka source
#                        that ships in the rdkafka-sys crate, built with snappy,
#                        gzip, lz4 (librdkafka's own copy) and zstd (the source in
#                        the zstd-sys crate), all linked in statically;
#   franz-bench          bench/franz: franz-go from the Go module proxy.
#
# The Java client needs nothing built: scripts/kafka-tool.sh runs Kafka's own
# kafka-producer-perf-test and kafka-consumer-perf-test from the broker's jars.
# Needs gcc, make, curl and Go. Only the benchmarks use C; the services never do.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Crates are fetched from crates.io by name and checked against these digests.
rdkafka_sys=4.10.0+2.12.1
rdkafka_sys_sha256=e234cf318915c1059d4921ef7f75616b5219b10b46e9f3a511a15eb4b56a3f77
zstd_sys=2.0.16+zstd.1.5.7
zstd_sys_sha256=91e19ebc2adc8f83e43039e79776e3fda8ca919132d68a1fed6a5faca2683748

key=$( {
  echo "$rdkafka_sys_sha256 $zstd_sys_sha256"
  cat "$0" "$root/bench/franz/go.mod" "$root/bench/franz/go.sum" "$root/bench/franz/main.go"
  gcc --version 2>/dev/null | head -1
  go version 2>/dev/null
} | sha256sum | cut -c1-16)
out=${EDA_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rust-eda}/peers-$key
mkdir -p "$out"
# One build at a time in that folder: two benchmark runs may start together.
exec 9>"$out/.lock"
flock 9

fetch_crate() { # name version sha256 → unpacked folder
  local dir=$out/src/$1-$2
  if [[ ! -d $dir ]]; then
    mkdir -p "$out/src"
    curl -sSfL --retry 3 -o "$out/src/$1.crate" "https://static.crates.io/crates/$1/$1-$2.crate" || {
      echo "bench-peers: could not download the $1 $2 crate from crates.io" >&2; exit 1; }
    echo "$3  $out/src/$1.crate" | sha256sum -c --quiet - || {
      echo "bench-peers: the $1 $2 crate does not match its digest" >&2; exit 1; }
    tar xzf "$out/src/$1.crate" -C "$out/src"
  fi
  echo "$dir"
}

if [[ ! -x $out/rdkafka_performance ]]; then
  echo "bench-peers: building librdkafka's rdkafka_performance (about a minute)" >&2
  zsrc=$(fetch_crate zstd-sys "$zstd_sys" "$zstd_sys_sha256")/zstd/lib
  zdir=$out/zstd
  rm -rf "$zdir" && mkdir -p "$zdir/obj" "$zdir/include"
  # zstd-sys carries zstd's sources without their Makefile: compile them as it does.
  for f in "$zsrc"/common/*.c "$zsrc"/compress/*.c "$zsrc"/decompress/*.c "$zsrc"/decompress/*.S; do
    echo "$f"
  done | xargs -P "$(nproc)" -I{} sh -c 'gcc -O2 -fPIC -DXXH_NAMESPACE=ZSTD_ -c "$1" -o "$2/obj/$(basename "$1").o"' _ {} "$zdir"
  ar rcs "$zdir/libzstd.a" "$zdir"/obj/*.o
  cp "$zsrc"/zstd.h "$zsrc"/zstd_errors.h "$zsrc"/zdict.h "$zdir/include/"

  rsrc=$(fetch_crate rdkafka-sys "$rdkafka_sys" "$rdkafka_sys_sha256")/librdkafka
  (
    cd "$rsrc"
    chmod +x configure lds-gen.py
    CPPFLAGS="-I$zdir/include" LDFLAGS="-L$zdir" ./configure --disable-ssl --disable-gssapi \
      --disable-sasl --disable-curl --enable-zstd --enable-static --disable-shared >"$out/configure.log" 2>&1 ||
      { echo "bench-peers: librdkafka's configure failed; see $out/configure.log" >&2; exit 1; }
    grep -q 'define WITH_ZSTD 1' config.h || { echo "bench-peers: librdkafka was configured without zstd" >&2; exit 1; }
    make -j"$(nproc)" -C src librdkafka.a >"$out/make.log" 2>&1 &&
      make -C examples rdkafka_performance >>"$out/make.log" 2>&1 ||
      { echo "bench-peers: building librdkafka failed; see $out/make.log" >&2; exit 1; }
    cp examples/rdkafka_performance "$out/"
  )
fi

if [[ ! -x $out/franz-bench ]]; then
  echo "bench-peers: building bench/franz (franz-go)" >&2
  (cd "$root/bench/franz" && go build -o "$out/franz-bench" .) ||
    { echo "bench-peers: building bench/franz failed (it needs Go and the Go module proxy)" >&2; exit 1; }
fi
echo "$out"
