#!/usr/bin/env bash
# A Docker engine and the offline Lambda base image, for the emulator and docker backend tests.
# Idempotent: installs Debian's docker.io + debootstrap only if no engine answers, starts dockerd only if
# it is not running, builds the base image only if its tag is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

docker_up() { docker info >/dev/null 2>&1; }

if ! docker_up; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
            || ! command -v docker >/dev/null 2>&1; then
        echo "docker.sh: installing docker.io and debootstrap"
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q docker.io debootstrap
    fi
    if ! docker_up; then
        if ! pgrep -x dockerd >/dev/null 2>&1; then
            echo "docker.sh: starting dockerd (log: /tmp/dockerd.log)"
            $SUDO sh -c 'nohup dockerd >>/tmp/dockerd.log 2>&1 &'
        fi
        for _ in $(seq 1 60); do
            if docker_up; then break; fi
            sleep 1
        done
        if ! docker_up; then
            echo "docker.sh: the Docker engine did not answer within 60 s; tail of /tmp/dockerd.log:" >&2
            tail -n 30 /tmp/dockerd.log >&2 || true
            exit 1
        fi
    fi
fi
echo "docker.sh: Docker engine $(docker version --format '{{.Server.Version}}') is up"

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    if ! docker image inspect corral-lambda-python:3.11 >/dev/null 2>&1; then
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q debootstrap
    fi
fi

# The base image (skipped when the tag exists).
if corral emulator --help >/dev/null 2>&1; then
    $SUDO "$(command -v corral)" emulator build-base
else
    $SUDO "$(command -v python3 || command -v python)" -m corral_emulator build-base
fi
