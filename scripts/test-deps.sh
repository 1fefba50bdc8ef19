#!/usr/bin/env bash
# Installs and starts what the tests need on a Debian/Ubuntu machine, doing
# nothing that is already done: RabbitMQ (running on 127.0.0.1:5672), Redis
# (running on 127.0.0.1:6379, for lookup sources), git, python3-zmq,
# libzmq3-dev, tshark, python3-pika and python3-amqp. Needs root, or sudo without a password.
set -euo pipefail

SUDO=()
if [[ $(id -u) != 0 ]]; then
	SUDO=(sudo -n)
fi

missing=()
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# tshark checks that AMQP captures decode; python3-pika and python3-amqp
# (py-amqp, AMQPLAIN) are real AMQP clients besides amqp091-go.
for pkg in python3-zmq libzmq3-dev tshark python3-pika python3-amqp; do
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
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if ! redis_up; then
	echo "test-deps: starting Redis"
	redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
	for ((i = 0; i < 40; i++)); do
		redis_up && break
		sleep 0.25
	done
	redis_up || { echo "test-deps: Redis did not open 127.0.0.1:6379 within 10s" >&2; exit 1; }
fi
echo "test-deps: RabbitMQ, Redis, git, python3-zmq, libzmq3-dev, tshark, python3-pika and python3-amqp are ready"
