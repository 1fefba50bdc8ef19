#!/usr/bin/env bash
# Installs and starts what the tests need on a Debian/Ubuntu machine, doing
# nothing that is already done: RabbitMQ (running on 127.0.0.1:5672), git,
# python3-zmq and libzmq3-dev. Needs root, or sudo without a password.
set -euo pipefail

SUDO=()
if [[ $(id -u) != 0 ]]; then
	SUDO=(sudo -n)
fi

missing=()
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v git >/dev/null 2>&1 || missing+=(git)
# tshark checks that AMQP captures decode; python3-pika is a second real AMQP client.
for pkg in python3-zmq libzmq3-dev tshark python3-pika; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
	echo "test-deps: installing ${missing[*]}"
	"${SUDO[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! rabbit_up; then
	echo "test-deps: starting RabbitMQ"
	"${SUDO[@]}" rabbitmq-server -detached
	for ((i = 0; i < 120; i++)); do
		rabbit_up && break
		sleep 0.5
	done
	rabbit_up || { echo "test-deps: RabbitMQ did not open 127.0.0.1:5672 within 60s" >&2; exit 1; }
	"${SUDO[@]}" rabbitmqctl -q await_startup
fi
echo "test-deps: RabbitMQ, git, python3-zmq, libzmq3-dev, tshark and python3-pika are ready"
