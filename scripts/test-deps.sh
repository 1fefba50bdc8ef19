#!/usr/bin/env bash
# Installs and starts what the tests need on a Debian/Ubuntu machine, doing
# nothing that is already done: RabbitMQ (running on 127.0.0.1:5672, with
# the tests' user and vhosts), Redis (running on 127.0.0.1:6379, for lookup
# sources), git, gcc (the race detector needs cgo), curl, python3-zmq,
# libzmq3-dev (the project's guide asks for it with python3-zmq), tshark,
# python3-pika and python3-amqp. Needs root, or sudo without a password.
set -euo pipefail

SUDO=()
if [[ $(id -u) != 0 ]]; then
	if ! sudo -n true 2>/dev/null; then
		echo "test-deps: run as root, or as a user with passwordless sudo: packages are installed with apt-get and RabbitMQ is set up with rabbitmqctl" >&2
		exit 1
	fi
	SUDO=(sudo -n)
fi

# tshark checks that AMQP captures decode; python3-pika and python3-amqp
# (py-amqp, AMQPLAIN) are real AMQP clients besides amqp091-go.
missing=()
for pkg in rabbitmq-server redis-server git gcc libc6-dev curl python3-zmq libzmq3-dev tshark python3-pika python3-amqp; do
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

# The tests' user and vhosts (internal/e2e/rabbit.go names them).
user=prelude-test
password=Pr3lude-pw-7f3a9c
rmq() { "${SUDO[@]}" rabbitmqctl -q "$@"; }
if ! rmq list_users | grep -q "^$user\b"; then
	echo "test-deps: creating RabbitMQ user $user"
	rmq add_user "$user" "$password" >/dev/null
else
	rmq change_password "$user" "$password" >/dev/null
fi
for vhost in / prelude-a prelude-b /orders; do
	rmq list_vhosts | grep -qx -- "$vhost" || rmq add_vhost "$vhost" >/dev/null
	rmq set_permissions -p "$vhost" "$user" '.*' '.*' '.*' >/dev/null
done

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
echo "test-deps: RabbitMQ (user $user, vhosts / prelude-a prelude-b /orders), Redis, git, gcc, curl, python3-zmq, libzmq3-dev, tshark, python3-pika and python3-amqp are ready"
