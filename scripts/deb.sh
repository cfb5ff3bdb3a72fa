#!/usr/bin/env bash
# Build the Debian package custodyd_<version>_<arch>.deb with cargo-deb, check it with lintian
# and list its contents.
#   scripts/deb.sh              release build of custodyd and custody, then package
#   scripts/deb.sh --no-build   package the binaries already in $CARGO_TARGET_DIR/release
# Prints the package's path on the last line. Needs cargo-deb and lintian (`make deb` installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
case "${1:-}" in
  --no-build) build= ;;
  "") build=1 ;;
  *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac
if [ -n "$build" ]; then
  cargo build --release --locked -p custody-daemon -p custody-client
fi
# Man pages and completions, generated from the binaries' own clap definitions.
assets=$target/release/deb-assets
rm -rf "$assets"
"$target/release/custodyd" --generate-assets "$assets"
"$target/release/custody" generate-assets "$assets"
gzip -9n "$assets/custodyd.8" "$assets/custody.1"
out=$target/debian
mkdir -p "$out"
deb=$(cargo deb -p custody-daemon --no-build --output "$out" 2>"$out/cargo-deb.log" | tail -n 1) || {
  cat "$out/cargo-deb.log" >&2; exit 1; }
echo "== dpkg-deb -c $deb"
dpkg-deb -c "$deb"
echo "== lintian $deb"
# Errors fail the build; warnings and info are shown. Not an upload to Debian: no ITP bug to close.
lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb"
echo "$deb"
