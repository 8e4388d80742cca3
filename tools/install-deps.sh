#!/bin/sh
# tools/install-deps.sh -- installs the Debian packages clip needs to build and test.
# Does nothing when they are all present; uses sudo when not run as root.
set -e
pkgs="build-essential pkg-config libopenblas-dev libstb-dev libssl-dev openssl python3 python3-numpy"
missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# shellcheck disable=SC2086
$sudo apt-get install -y -q --no-install-recommends $missing
