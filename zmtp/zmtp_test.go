package zmtp

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// python is Debian's python3, which has python3-zmq (make test installs
// it); the python3 first on PATH may be another interpreter.
const python = "/usr/bin/python3"

// requirePyZMQ fails under CI, or skips elsewhere, without python3-zmq.
func requirePyZMQ(t testing.TB) {
	t.Helper()
	if err := exec.Command(python, "-c", "import zmq").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("python3-zmq is required: %v", err)
		}
		t.Skipf("python3-zmq missing: %v", err)
	}
}

// captureClient connects a libzmq DEALER (NULL, identity "client-7") to a
// listener that answers the greeting step by step as a ROUTER would, and
// returns the client's 64-byte greeting and its first frame (READY).
func captureClient(t *testing.T) (greeting, ready []byte) {
	t.Helper()
	requirePyZMQ(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	script := `import zmq, sys, time
c = zmq.Context(); s = c.socket(zmq.DEALER); s.setsockopt(zmq.IDENTITY, b"client-7")
s.connect("tcp://` + ln.Addr().String() + `"); time.sleep(2); s.close(0); c.term()`
	cmd := exec.Command(python, "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	greeting = make([]byte, GreetingLen)
	if _, err := io.ReadFull(c, greeting[:SignatureLen]); err != nil {
		t.Fatal(err)
	}
	ours := append(Signature(), 3, 1)
	ours = append(ours, []byte("NULL")...)
	ours = append(ours, make([]byte, GreetingLen-len(ours))...)
	_, _ = c.Write(ours[:11])
	if _, err := io.ReadFull(c, greeting[SignatureLen:]); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(ours[11:])
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return greeting, buf[:n]
}

func TestLibzmqClientGreetingAndReady(t *testing.T) {
	g, ready := captureClient(t)
	for i := 0; i < GreetingLen; i++ {
		if _, err := ParseGreeting(g[:i]); !errors.Is(err, ErrNeedMore) {
			t.Fatalf("greeting prefix %d: %v", i, err)
		}
	}
	got, err := ParseGreeting(g)
	if err != nil || got.Major != 3 || got.Mechanism != "NULL" {
		t.Fatalf("greeting %+v %v", got, err)
	}
	for i := 0; i < len(ready); i++ {
		if _, _, err := ParseFrame(ready[:i], 1<<20); !errors.Is(err, ErrNeedMore) {
			t.Fatalf("READY prefix %d: %v", i, err)
		}
	}
	f, n, err := ParseFrame(ready, 1<<20)
	if err != nil || n != len(ready) || !f.IsCommand() {
		t.Fatalf("READY frame %+v %d %v", f, n, err)
	}
	cmd, err := ParseCommand(f.Body)
	if err != nil || cmd.Name != "READY" {
		t.Fatalf("command %+v %v", cmd, err)
	}
	props, err := ParseMetadata(cmd.Data)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"Socket-Type": "DEALER", "Identity": "client-7"}
	for _, p := range props {
		if w, ok := want[p.Name]; ok && string(p.Value) == w {
			delete(want, p.Name)
		}
	}
	if len(want) != 0 {
		t.Fatalf("READY metadata %v lacks %v", props, want)
	}
}

func TestSignaturePadding(t *testing.T) {
	// libzmq writes its identity length in the padding: it must not matter.
	sig := []byte{0xFF, 0, 0, 0, 0, 0, 0, 0, 9, 0x7F}
	if err := CheckSignature(sig); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < SignatureLen; i++ {
		if err := CheckSignature(sig[:i]); !errors.Is(err, ErrNeedMore) {
			t.Fatalf("prefix %d: %v", i, err)
		}
	}
}

func TestOtherProtocols(t *testing.T) {
	for name, b := range map[string][]byte{
		"amqp": []byte("AMQP\x00\x00\x09\x01"), "http": []byte("GET / HTTP/1.1\r\n"),
		"tls": {0x16, 3, 1, 0, 0xa5}, "ssh": []byte("SSH-2.0-x"), "git": []byte("0032git-upload-pack /x"),
		"foo": []byte("REQ 1 x\n"), "zmtp2": {0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 1, 5},
		"bad-byte-10": {0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7E},
	} {
		if err := CheckSignature(b); name != "zmtp2" && !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := ParseGreeting(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s greeting: %v", name, err)
		}
	}
}

func TestFrameLimitsAndFlags(t *testing.T) {
	long := []byte{FlagLong, 0xFF, 0, 0, 0, 0, 0, 0, 0}
	if _, _, err := ParseFrame(long, 1<<20); !errors.Is(err, ErrMalformed) {
		t.Fatalf("huge long frame: %v", err)
	}
	if _, _, err := ParseFrame([]byte{0x08, 0}, 10); !errors.Is(err, ErrMalformed) {
		t.Fatalf("reserved flag: %v", err)
	}
	if _, _, err := ParseFrame([]byte{FlagCommand | FlagMore, 0}, 10); !errors.Is(err, ErrMalformed) {
		t.Fatalf("command with MORE: %v", err)
	}
	if _, err := ParseMetadata([]byte{4, 'N', 'a', 'm', 'e', 0, 0, 0, 9, 'x'}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short metadata value: %v", err)
	}
}

func FuzzGreetingAndCommands(f *testing.F) {
	g := append(Signature(), 3, 1)
	g = append(g, []byte("CURVE")...)
	g = append(g, make([]byte, GreetingLen-len(g))...)
	f.Add(g)
	f.Add([]byte{FlagCommand, 10, 5, 'R', 'E', 'A', 'D', 'Y', 1, 'a', 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = CheckSignature(b)
		_, _ = ParseGreeting(b)
		for len(b) > 0 {
			fr, n, err := ParseFrame(b, 1<<16)
			if err != nil {
				break
			}
			if fr.IsCommand() {
				if c, err := ParseCommand(fr.Body); err == nil {
					_, _ = ParseMetadata(c.Data)
				}
			}
			b = b[n:]
		}
	})
}

func TestPlainUsername(t *testing.T) {
	if u, err := PlainUsername([]byte("\x05alice\x06secret")); err != nil || u != "alice" {
		t.Fatalf("%q %v", u, err)
	}
	for _, bad := range []string{"", "\x05ali", "\x05alice", "\x05alice\x09secret"} {
		if _, err := PlainUsername([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q accepted", bad)
		}
	}
	if g, err := ParseGreeting(append(append(Signature(), 3), GreetingTail(1, "PLAIN")...)); err != nil || g.Mechanism != "PLAIN" || g.Minor != 1 {
		t.Fatalf("GreetingTail: %+v %v", g, err)
	}
}

func TestAppendError(t *testing.T) {
	b := AppendError(nil, "no worker available")
	f, n, err := ParseFrame(b, 1<<10)
	if err != nil || n != len(b) || !f.IsCommand() {
		t.Fatalf("%+v %d %v", f, n, err)
	}
	c, err := ParseCommand(f.Body)
	if err != nil || c.Name != "ERROR" || string(c.Data[1:]) != "no worker available" || int(c.Data[0]) != len("no worker available") {
		t.Fatalf("%+v %v", c, err)
	}
}
