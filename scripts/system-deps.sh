#!/usr/bin/env bash
# Installs the Debian packages tabserve needs (redis-server; prometheus for the monitoring
# tests; chromium for the web page's browser test) when they are missing. As root it uses
# apt-get; otherwise it says what to install.
set -euo pipefail
missing=()
for pkg in "$@"; do
  case "$pkg" in
    redis-server) command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) ;;
    prometheus) command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus) ;;
    chromium) [ -x /usr/bin/chromium ] || missing+=(chromium) ;;
    *) dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "tabserve needs these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
