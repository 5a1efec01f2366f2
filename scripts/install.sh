#!/usr/bin/env bash
# Builds normkit in release mode and installs the C library, header and pkg-config file.
#   scripts/install.sh [PREFIX]      (default PREFIX: /usr/local; or set PREFIX=...)
# Installs PREFIX/lib/libnormkit.{so,a}, PREFIX/include/normkit.h and
# PREFIX/lib/pkgconfig/normkit.pc (from normkit.pc.in). Extra cargo flags: CARGO_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:-${PREFIX:-/usr/local}}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
# shellcheck disable=SC2086
cargo build --release --lib ${CARGO_FLAGS:-}
target="${CARGO_TARGET_DIR:-target}/release"
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libnormkit.so" "$prefix/lib/"
install -m 0644 "$target/libnormkit.a" "$prefix/lib/"
install -m 0644 include/normkit.h "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" normkit.pc.in \
  > "$prefix/lib/pkgconfig/normkit.pc"
echo "installed normkit $version into $prefix (pkg-config: $prefix/lib/pkgconfig/normkit.pc)"
