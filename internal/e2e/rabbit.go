package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// RabbitAddr is the RabbitMQ every test talks to.
const RabbitAddr = "127.0.0.1:5672"

// The user and vhosts the AMQP tests create on RabbitMQ. The password is
// distinctive so that a leak into logs is found by searching for it.
const (
	TestUser     = "prelude-test"
	TestPassword = "Pr3lude-pw-7f3a9c"
	VhostA       = "prelude-a"
	VhostB       = "prelude-b"
	VhostOrders  = "/orders" // the vhost of the README's and the examples
)

var rabbitOnce sync.Once
var rabbitErr error

// RequireRabbit makes sure RabbitMQ runs and has the test user and vhosts.
func RequireRabbit(t testing.TB) {
	t.Helper()
	RequirePeer(t, "RabbitMQ", RabbitAddr, "start it with `rabbitmq-server -detached` or run `make test`")
	rabbitOnce.Do(func() { rabbitErr = provisionRabbit() })
	if rabbitErr != nil {
		t.Fatalf("preparing RabbitMQ: %v", rabbitErr)
	}
}

func provisionRabbit() error {
	// Already there? A direct connection per vhost tells, without rabbitmqctl.
	ok := true
	for _, vh := range []string{VhostA, VhostB, VhostOrders} {
		c, err := amqp091.Dial(URL(RabbitAddr, vh))
		if err != nil {
			ok = false
			break
		}
		_ = c.Close()
	}
	if ok {
		return nil
	}
	steps := [][]string{
		{"add_user", TestUser, TestPassword},
		{"change_password", TestUser, TestPassword},
		{"add_vhost", VhostA}, {"add_vhost", VhostB}, {"add_vhost", VhostOrders},
		{"set_permissions", "-p", "/", TestUser, ".*", ".*", ".*"},
		{"set_permissions", "-p", VhostA, TestUser, ".*", ".*", ".*"},
		{"set_permissions", "-p", VhostB, TestUser, ".*", ".*", ".*"},
		{"set_permissions", "-p", VhostOrders, TestUser, ".*", ".*", ".*"},
	}
	for _, s := range steps {
		out, err := Rabbitmqctl(s...)
		if err != nil && !strings.Contains(out, "already exists") {
			return errors.New("rabbitmqctl " + s[0] + ": " + strings.TrimSpace(out))
		}
	}
	return nil
}

// Rabbitmqctl runs rabbitmqctl and returns its combined output.
func Rabbitmqctl(args ...string) (string, error) {
	out, err := exec.Command("rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	return string(out), err
}

// URL is the amqp:// URL for the test user through addr to vhost.
func URL(addr, vhost string) string {
	return "amqp://" + TestUser + ":" + TestPassword + "@" + addr + "/" + urlVhost(vhost)
}

func urlVhost(v string) string { return strings.ReplaceAll(v, "/", "%2f") }
