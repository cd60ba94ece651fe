# Sourced by the scripts that run a service binary's own command: sets $bin to
# the order-service binary in $EDA_BIN, on the PATH, in dist/ for this machine's
# architecture, in target/release, or built with cargo (any of the three binaries
# would do). dist/ may hold binaries for other architectures too
# (scripts/build-static.sh all), which this machine cannot run.
name=order-service
bin=${EDA_BIN:-}
if [[ -z $bin ]]; then
  case $(uname -m) in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) arch=$(uname -m) ;;
  esac
  for candidate in "$(command -v $name || true)" "$root/dist/$arch-unknown-linux-musl/$name" \
    "$root/target/release/$name"; do
    if [[ -n $candidate && -x $candidate ]]; then bin=$candidate; break; fi
  done
fi
if [[ -z $bin ]]; then
  command -v cargo >/dev/null || { echo "no $name binary found and no cargo to build one" >&2; exit 1; }
  cargo build --release --quiet --bin $name --manifest-path "$root/Cargo.toml"
  bin=$root/target/release/$name
fi
