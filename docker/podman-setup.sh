#!/usr/bin/env bash
# Make a daemonless container toolchain ready on a Debian machine without a Docker engine or a registry.
#
#   eval "$(docker/podman-setup.sh)"      # installs what is missing, prints the env to export
#
# Idempotent, in four steps, each skipped when already done:
#   1. apt-get install buildah, podman, skopeo, runc, debootstrap, ... (and docker-registry for the push test);
#   2. write storage/containers/registries config under $SLIMSHIP_CACHE/containers (overlay storage of our own,
#      runc, ulimits the sandbox allows: it lacks CAP_SYS_RESOURCE, so podman's default ulimits fail);
#   3. make the base image the Dockerfiles start FROM: no registry can be reached, so debootstrap a minimal
#      Debian bookworm with Python 3.11 and tag it python:3.11-slim, so the same Dockerfile builds unchanged
#      with `docker build` where Docker Hub exists;
#   4. cache that base as an archive ($SLIMSHIP_CACHE/base-python-3.11-slim.tar): a fresh storage (CI on the
#      same machine) loads it in seconds instead of debootstrapping again (~45 s).
# Progress goes to stderr; stdout carries only the `export` lines.
set -euo pipefail

if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/slimship; else default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/slimship; fi
CACHE=${SLIMSHIP_CACHE:-$default_cache}
CONF=$CACHE/containers
BASE_NAME=${SLIMSHIP_BASE_IMAGE:-docker.io/library/python:3.11-slim}
# Bump when the base recipe below changes: an older cached base (image or archive) is then rebuilt.
BASE_RECIPE=2
BASE_ARCHIVE=$CACHE/base-python-3.11-slim.r$BASE_RECIPE.tar
SUITE=bookworm   # Debian bookworm ships Python 3.11, the version the tag promises
PACKAGES="buildah podman skopeo umoci debootstrap runc fuse-overlayfs slirp4netns uidmap
          containernetworking-plugins golang-github-containers-common docker-registry"

log() { echo "[podman-setup] $*" >&2; }

# 1. packages -------------------------------------------------------------------------------------------------
missing=""
for cmd in buildah podman skopeo debootstrap runc docker-registry; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        log "missing:$missing; run this script as root (it installs them with apt-get)"; exit 1
    fi
    log "installing container tools (missing:$missing)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $PACKAGES >&2
fi

# 2. config ---------------------------------------------------------------------------------------------------
mkdir -p "$CONF/storage" "$CONF/run"
cat > "$CONF/storage.conf.new" <<EOF
[storage]
driver = "overlay"
graphroot = "$CONF/storage"
runroot = "$CONF/run"
EOF
cat > "$CONF/containers.conf.new" <<EOF
[containers]
# The sandbox lacks CAP_SYS_RESOURCE: keep the limits at what it can set.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
# crun fails here ("cgroups in hybrid mode not supported"); runc works.
runtime = "runc"
EOF
cat > "$CONF/registries.conf.new" <<EOF
# FROM python:3.11-slim resolves to docker.io/library/python:3.11-slim, found locally (we never pull).
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
for f in storage.conf containers.conf registries.conf; do
    if cmp -s "$CONF/$f.new" "$CONF/$f"; then rm "$CONF/$f.new"; else mv "$CONF/$f.new" "$CONF/$f"; fi
done

export CONTAINERS_STORAGE_CONF=$CONF/storage.conf
export CONTAINERS_CONF=$CONF/containers.conf
export CONTAINERS_REGISTRIES_CONF=$CONF/registries.conf
export BUILDAH_ISOLATION=chroot

# 3./4. base image --------------------------------------------------------------------------------------------
debian_mirror() {
    # The mirror apt already uses (deb822 .sources or one-line .list), else Debian's own.
    local uri
    uri=$(grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
          | grep -E '/debian/?$' | head -n1 || true)
    [ -n "$uri" ] || uri=$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
          | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

base_recipe() { podman image inspect --format '{{ index .Labels "io.slimship.base-recipe" }}' "$BASE_NAME" 2>/dev/null || true; }

if [ "$(base_recipe)" = "$BASE_RECIPE" ]; then
    log "base image $BASE_NAME present"
elif [ -s "$BASE_ARCHIVE" ]; then
    log "loading base image from $BASE_ARCHIVE"
    podman load -q -i "$BASE_ARCHIVE" >&2
else
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $SUITE from $mirror (about a minute)"
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

cat <<EOF
export CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF
export CONTAINERS_CONF=$CONTAINERS_CONF
export CONTAINERS_REGISTRIES_CONF=$CONTAINERS_REGISTRIES_CONF
export BUILDAH_ISOLATION=$BUILDAH_ISOLATION
EOF
