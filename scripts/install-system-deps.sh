#!/usr/bin/env bash
# Installs the Debian packages sigledger's tests and demo need, when they are missing (root only).
set -euo pipefail
packages=(
  postgresql-15 postgresql-client-15 postgresql-contrib
  postgresql-15-pgtap postgresql-15-plpgsql-check libtap-parser-sourcehandler-pgtap-perl
  openjdk-17-jdk-headless maven
  prometheus  # promtool: checks and unit-tests the alert rules in ops/prometheus (make test)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's postgresql-common creates and starts a default cluster; sigledger runs its own clusters.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main'; then
  pg_ctlcluster 15 main stop 2>/dev/null || true
fi
