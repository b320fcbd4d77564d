#!/usr/bin/env bash
# Installs Mono's C# compiler and runtime from Debian's packages for the C# example (the .NET
# SDK and NuGet are not reachable here; the same source builds with `dotnet` elsewhere).
# Idempotent: does nothing when `mcs` and `mono` are already there.
set -euo pipefail
if command -v mcs >/dev/null && command -v mono >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup: Mono is missing and installing it needs root: apt-get install mono-mcs mono-runtime libmono-system-net-http4.0-cil libmono-system-runtime-serialization4.0-cil" >&2
  exit 1
fi
echo "setup: installing Mono from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq mono-mcs mono-runtime libmono-system-net-http4.0-cil \
  libmono-system-runtime-serialization4.0-cil >/dev/null
echo "setup: mono ready" >&2
