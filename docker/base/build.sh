#!/usr/bin/env bash
# A Debian 12 base image for sites without access to a container registry: mmdebstrap
# bootstraps a minimal root file system from Debian's package archive (or a mirror, as
# `apt` on this machine is configured) and `podman import` (or `docker import`) turns it
# into an image. It has what the Dockerfiles need from `python:3.11-slim`: python3 (3.11,
# the version requirements/serving.lock is made on), `python3 -m venv` with its bundled pip,
# and the CA certificates. No compiler.
#
#   docker/base/build.sh [TAG]      # default tag: ml2p-base:<hash of this file>
#
# The default tag is keyed on this file's content, so an unchanged script reuses the image
# already in the engine's store (the container test and CI do), and a changed one builds anew.
# ENGINE=docker to import with Docker; SUITE / MIRROR to pick the release and mirror.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
engine="${ENGINE:-podman}"
suite="${SUITE:-bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
tag="${1:-ml2p-base:$(sha256sum "$0" | cut -c1-12)}"
packages=python3,python3-venv,ca-certificates

if "$engine" image exists "$tag" 2>/dev/null \
   || { [ "$engine" = docker ] && docker image inspect "$tag" >/dev/null 2>&1; }; then
  echo "$tag"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# minbase: essential packages + apt only; no recommends, no documentation or man pages (the
# dpkg path filters drop them as packages unpack, so they never take space in the layer)
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$suite" "$work/rootfs.tar" "$mirror" >&2
"$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$work/rootfs.tar" "$tag" >&2
echo "$tag"
