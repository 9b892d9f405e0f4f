#!/usr/bin/env bash
# Prepare a Debian/Ubuntu host, as root, to build and run the slimship image with podman/buildah where there is
# no Docker engine and possibly no registry. The container tests run it first; docs/CONTAINERS.md gives the same
# steps to an administrator. slimship itself never runs it: it uses whichever of docker/podman/buildah works.
#
#   sudo bash tests/podman-setup.sh
#
# Everything goes where the machine's own podman looks (its default storage and config), so images built by
# slimship show up in a plain `podman images` and start with a plain `podman run`. Idempotent, in three steps,
# each skipped when already done:
#   1. apt-get install buildah, podman, skopeo, runc, debootstrap, ... (and docker-registry for the push test);
#   2. the base image the Dockerfiles start FROM (docker.io/library/python:3.11-slim): pulled where a registry
#      answers; otherwise loaded from the cached archive, or made once by debootstrapping a minimal Debian
#      bookworm with Python 3.11 (~1 min) and cached as $SLIMSHIP_CACHE/base-python-3.11-slim.r<recipe>.tar;
#   3. a containers.conf drop-in, only when `podman run` fails without one: ulimits a sandbox without
#      CAP_SYS_RESOURCE can set (podman's defaults fail with "setrlimit ... operation not permitted"), and runc
#      (crun fails with "cgroups in hybrid mode not supported").
# Progress goes to stderr.
set -euo pipefail

CACHE=${SLIMSHIP_CACHE:-/var/cache/slimship}
BASE_NAME=docker.io/library/python:3.11-slim
# Bump when the debootstrap recipe below changes: an older home-made base (image or archive) is then rebuilt.
BASE_RECIPE=2
BASE_ARCHIVE=$CACHE/base-python-3.11-slim.r$BASE_RECIPE.tar
SUITE=bookworm   # Debian bookworm ships Python 3.11, the version the tag promises
PACKAGES="buildah podman skopeo umoci debootstrap runc fuse-overlayfs slirp4netns uidmap
          containernetworking-plugins golang-github-containers-common docker-registry"
DROP_IN=/etc/containers/containers.conf.d/50-slimship-sandbox.conf

log() { echo "[podman-setup] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run this as root: it installs packages and writes /etc/containers"; exit 1
fi
mkdir -p "$CACHE"

# 1. packages -------------------------------------------------------------------------------------------------
missing=""
for cmd in buildah podman skopeo debootstrap runc docker-registry; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    log "installing container tools (missing:$missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >&2
fi

# 2. base image -----------------------------------------------------------------------------------------------
debian_mirror() {
    # The mirror apt already uses (deb822 .sources or one-line .list), else Debian's own.
    local uri
    uri=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
          | grep -E '/debian/?$' | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# "real" for a pulled image, the recipe number for a home-made one, empty when there is none.
base_kind() {
    podman image exists "$BASE_NAME" || return 0
    local recipe
    recipe=$(podman image inspect --format '{{ index .Labels "io.slimship.base-recipe" }}' "$BASE_NAME" 2>/dev/null || true)
    case "$recipe" in ""|"<no value>") echo real ;; *) echo "$recipe" ;; esac
}

kind=$(base_kind)
if [ "$kind" = real ] || [ "$kind" = "$BASE_RECIPE" ]; then
    log "base image $BASE_NAME present"
elif [ -s "$BASE_ARCHIVE" ]; then
    log "loading base image from $BASE_ARCHIVE"
    podman load -q -i "$BASE_ARCHIVE" >&2
elif timeout 60 podman pull -q "$BASE_NAME" >/dev/null 2>&1; then
    log "pulled $BASE_NAME"
else
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "no registry answers: debootstrap $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
        || { log "debootstrap failed, see $CACHE/debootstrap.log"; exit 1; }
    # Look like python:3.11-slim where it matters: `python` on the PATH, pip allowed into venvs and
    # the system (no EXTERNALLY-MANAGED marker), and, like Debian's slim images, no apt lists, docs, man pages
    # or message translations.
    ln -sf python3 "$rootfs/usr/bin/python"
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
           "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    tar -C "$rootfs" -c . | podman import -q \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --change "LABEL io.slimship.base-recipe=$BASE_RECIPE" \
        - "$BASE_NAME" >&2
    rm -rf "$rootfs"; trap - EXIT
    log "caching base image as $BASE_ARCHIVE"
    podman save -q -o "$BASE_ARCHIVE.tmp" "$BASE_NAME" >&2
    mv "$BASE_ARCHIVE.tmp" "$BASE_ARCHIVE"
    find "$CACHE" -maxdepth 1 -name 'base-python-3.11-slim*.tar' ! -path "$BASE_ARCHIVE" -delete  # older recipes
fi

# 3. runtime config, only where the defaults cannot start a container ------------------------------------------
if ! probe=$(podman run --rm --network none "$BASE_NAME" true 2>&1); then
    log "podman run fails with the default config ($(echo "$probe" | tail -n1)); writing $DROP_IN"
    mkdir -p "$(dirname "$DROP_IN")"
    cat > "$DROP_IN" <<CONF
# Written by slimship's tests/podman-setup.sh: this host cannot start containers with podman's defaults.
[containers]
# No CAP_SYS_RESOURCE here: keep the limits at what the sandbox can set.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun fails here ("cgroups in hybrid mode not supported"); runc works.
runtime = "runc"
CONF
    podman run --rm --network none "$BASE_NAME" true >&2 || { log "podman run still fails"; exit 1; }
fi
log "ready: podman builds and runs with its default storage ($(podman info --format '{{.Store.GraphRoot}}'))"
