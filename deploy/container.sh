#!/usr/bin/env bash
# Build and run the SceneSpell image: with docker where its daemon runs, else with podman.
#
#   deploy/container.sh engine                  print the engine: docker or podman (ENGINE=podman forces it)
#   deploy/container.sh build BENTOFILE IMAGE   `bentoml build` then `bentoml containerize` as IMAGE
#   deploy/container.sh run ARGS...             `<engine> run ARGS...`
#
# With docker this is plain `bentoml containerize`. Podman is what runs on this project's machines, which reach
# no container registry: every podman workaround below says why it is there. Needs bentoml on PATH.
set -euo pipefail
DEPLOY=$(cd "$(dirname "$0")" && pwd)

# The base BentoML's Dockerfile names for docker.distro debian and docker.python_version 3.11 (bentofile.yaml).
PYTHON_BASE=python:3.11-slim
# Debian 12, whose python3 is 3.11 like the bento's: the image's virtualenv is made from it.
SUITE=bookworm
# These machines reach the package registries through a proxy whose CA only the host's system bundle holds: pip
# inside the build verifies TLS against this file, mounted read-only into the RUN steps (never copied into a layer).
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# crun fails on this kernel's hybrid cgroups (v1 controllers, a v2 mount); runc works. `podman build` has no
# --runtime flag and bentoml calls it, so the build reads the runtime from deploy/containers.conf.
RUNTIME=(--runtime runc)
# podman's default nofile limit is above the host's hard limit, which a container cannot raise
# (runc: "error setting rlimits"): ask for the host's own.
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=32768:32768)

engine() {
	if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; elif docker info >/dev/null 2>&1; then echo docker; else echo podman; fi
}

install_podman() {
	local missing=()
	for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
	[ ${#missing[@]} -eq 0 ] && return
	if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
		echo "error: no docker daemon, and ${missing[*]} missing: install docker, or podman runc mmdebstrap" >&2
		exit 1
	fi
	echo "installing ${missing[*]} (apt-get)" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc mmdebstrap >/dev/null
}

# The base image: present, else pulled from a registry, else (python base only) made from Debian packages.
podman_base() {
	podman image exists "$1" && return
	podman pull -q "$1" >/dev/null 2>&1 && return
	if [ "${1#docker.io/library/}" != "$PYTHON_BASE" ]; then
		echo "error: $1 cannot be pulled (no registry reached), and only $PYTHON_BASE can be made here" >&2
		exit 1
	fi
	echo "no registry reached: making $1 from Debian $SUITE packages (mmdebstrap, about a minute)" >&2
	# What BentoML's Dockerfile uses of python:3.11-slim: python3 with venv and pip, and the CA certificates.
	# Debian marks its python EXTERNALLY-MANAGED, which refuses pip installs outside a venv: remove the marker.
	# The Dockerfile may call `python` and `pip`, which Debian names python3 and pip3: link them.
	mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
		--customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
		--customize-hook='ln -sf python3 "$1"/usr/bin/python && ln -sf pip3 "$1"/usr/bin/pip' \
		"$SUITE" - "deb http://deb.debian.org/debian $SUITE main" \
		"deb http://deb.debian.org/debian $SUITE-updates main" \
		"deb http://deb.debian.org/debian-security $SUITE-security main" |
		podman import --change 'CMD ["python3"]' - "docker.io/library/$PYTHON_BASE" >/dev/null
	podman "${RUNTIME[@]}" run --rm "${ULIMITS[@]}" "$1" python -c 'import sys; assert sys.version_info[:2] == (3, 11)'
}

build() {
	local bentofile=${1:?bentofile} image=${2:?image} bento options=()
	bento=$(bentoml build --bentofile "$bentofile" --output tag | tail -1)
	bento=${bento#__tag__:}
	if [ "$(engine)" = podman ]; then
		install_podman
		podman_base "$(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$(bentoml get "$bento" -o path)/env/docker/Dockerfile" | head -1)"
		export CONTAINERS_CONF=$DEPLOY/containers.conf
		options=(--backend podman --opt "ulimit=nofile=$(ulimit -Hn):$(ulimit -Hn)"
			--opt format=docker) # podman's default OCI format drops the image's HEALTHCHECK
		[ -f "$CA_BUNDLE" ] && options+=(--opt "volume=$CA_BUNDLE:$CA_BUNDLE:ro")
	fi
	# bentoml 1.4.39 refuses the bento's own dockerfile_template unless its temporary build context lies under the
	# working directory (upstream issue #5566): run it from inside a temporary directory.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT # global: the trap runs after this function has returned
	(cd "$tmp" && TMPDIR=$tmp bentoml containerize "$bento" --image-tag "$image" "${options[@]}")
	echo "image $image: $("$(engine)" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
}

run() {
	if [ "$(engine)" = podman ]; then
		exec podman "${RUNTIME[@]}" run "${ULIMITS[@]}" "$@"
	fi
	exec docker run "$@"
}

command=${1:?usage: deploy/container.sh engine | build BENTOFILE IMAGE | run ARGS...}
shift
"$command" "$@"
