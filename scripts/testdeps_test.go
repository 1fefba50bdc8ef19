// Package scripts holds the project's shell scripts; its test runs them.
package scripts

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestDepsNeedsRootOrSudo: run by a user who is neither root nor allowed
// sudo, test-deps.sh stops at once with a message that says what it needs,
// before it tries apt-get.
func TestDepsNeedsRootOrSudo(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the script as the nobody user")
	}
	script, err := os.Open("test-deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	defer script.Close()
	cmd := exec.Command("su", "nobody", "-s", "/bin/bash", "-c", "bash -s")
	cmd.Stdin = script // nobody may not read the checkout
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("test-deps.sh succeeded as nobody:\n%s", out)
	}
	if !strings.Contains(string(out), "run as root, or as a user with passwordless sudo") || strings.Contains(string(out), "installing") {
		t.Fatalf("test-deps.sh as nobody said:\n%s", out)
	}
}
