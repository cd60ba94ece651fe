#!/usr/bin/env bash
# Builds the three services as static, stripped release binaries, without any C
# toolchain, into dist/<target>/.
#
#   scripts/build-static.sh            x86_64 and aarch64
#   scripts/build-static.sh x86_64     one architecture
#   scripts/build-static.sh aarch64
#   scripts/build-static.sh --profile ci-static all
#                                      CI's quicker profile (Cargo.toml): the same
#                                      static, C-free link without thin LTO; what
#                                      you ship comes from the default, release
#
# Needs only rustup: the musl targets are added if missing, and rust-lld (shipped
# with Rust) links them (see .cargo/config.toml). CC and CXX are set to /bin/false
# so that any dependency trying to compile C fails the build instead of sneaking in.
# CARGO_TARGET_DIR, when set, is where cargo builds; dist/ gets the binaries.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

profile=release
if [[ ${1:-} == --profile ]]; then
  profile=${2:?--profile takes a profile name}
  shift 2
fi
case ${1:-all} in
  x86_64) arches=(x86_64) ;;
  aarch64) arches=(aarch64) ;;
  all) arches=(x86_64 aarch64) ;;
  *) echo "usage: $0 [--profile NAME] [x86_64|aarch64|all]" >&2; exit 2 ;;
esac
built=${CARGO_TARGET_DIR:-target}

services=(order-service inventory-service notification-service)
for arch in "${arches[@]}"; do
  target=$arch-unknown-linux-musl
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  CC=/bin/false CXX=/bin/false cargo build --profile "$profile" --locked --target "$target" \
    "${services[@]/#/--bin=}"
  mkdir -p "dist/$target"
  for s in "${services[@]}"; do
    # Already stripped by the linker (profile.release.strip).
    cp "$built/$target/$profile/$s" "dist/$target/$s"
    if command -v file >/dev/null; then
      # "static-pie linked": static and position-independent, so ASLR still applies.
      file "dist/$target/$s" | grep -Eq "statically linked|static-pie linked" \
        || { echo "dist/$target/$s is not statically linked: $(file "dist/$target/$s")" >&2; exit 1; }
    fi
  done
  echo "dist/$target:" >&2
  ls -l "dist/$target" >&2
done
