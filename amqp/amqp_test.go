package amqp

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// parseClientStream parses a client's side of a handshake: the header, then
// method frames (heartbeats skipped). A truncated stream ends in ErrNeedMore.
func parseClientStream(b []byte) ([]Method, error) {
	if _, err := ParseHeader(b); err != nil {
		return nil, err
	}
	return parseFrames(b[HeaderLen:])
}

func parseFrames(b []byte) ([]Method, error) {
	var out []Method
	for len(b) > 0 {
		f, n, err := ParseFrame(b, 131072)
		if err != nil {
			return out, err
		}
		b = b[n:]
		if f.Type != FrameMethod {
			continue
		}
		m, err := ParseMethod(f.Payload)
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
	return out, nil
}

func TestCapturedHandshakes(t *testing.T) {
	for name, h := range loadCaptures(t) {
		t.Run(name, func(t *testing.T) {
			cm, err := parseClientStream(h.client)
			if err != nil {
				t.Fatal(err)
			}
			var ids []uint16
			for _, m := range cm {
				_, id := m.MethodID()
				ids = append(ids, id)
			}
			if want := []uint16{MethodStartOk, MethodTuneOk, MethodOpen}; !reflect.DeepEqual(ids[:3], want) {
				t.Fatalf("client methods %v, want %v first", ids, want)
			}
			so := cm[0].(*StartOk)
			if so.Mechanism != map[string]string{"plain": "PLAIN", "amqplain": "AMQPLAIN"}[name] {
				t.Errorf("mechanism %q", so.Mechanism)
			}
			if u, err := Username(so.Mechanism, so.Response); err != nil || u != "guest" {
				t.Errorf("Username = %q, %v", u, err)
			}
			if got := so.ClientProperties.String("connection_name"); got != "capture" {
				t.Errorf("connection_name %q", got)
			}
			if v := cm[2].(*Open).VirtualHost; v != "/orders" {
				t.Errorf("vhost %q", v)
			}
			if to := cm[1].(*TuneOk); to.FrameMax != 131072 || to.ChannelMax == 0 || to.Heartbeat != 10 {
				t.Errorf("tune-ok %+v", *to)
			}
			sm, err := parseFrames(h.server)
			if err != nil || len(sm) != 3 {
				t.Fatalf("server methods %v, %v", sm, err)
			}
		})
	}
}

// TestTruncatedPrefixes: every proper prefix of a real handshake is "need
// more", never "malformed", in both directions.
func TestTruncatedPrefixes(t *testing.T) {
	for name, h := range loadCaptures(t) {
		for i := 0; i < len(h.client); i++ {
			if _, err := parseClientStream(h.client[:i]); !errors.Is(err, ErrNeedMore) && !(i > 0 && endsOnFrame(h.client[:i])) {
				t.Fatalf("%s client prefix %d/%d: err %v, want ErrNeedMore", name, i, len(h.client), err)
			}
		}
		for i := 1; i < len(h.server); i++ {
			if _, err := parseFrames(h.server[:i]); err != nil && !errors.Is(err, ErrNeedMore) {
				t.Fatalf("%s server prefix %d: %v", name, i, err)
			}
		}
	}
}

// endsOnFrame reports whether b is a header plus whole frames.
func endsOnFrame(b []byte) bool {
	if len(b) < HeaderLen {
		return false
	}
	_, err := parseFrames(b[HeaderLen:])
	return err == nil
}

func TestHeaderPrefixes(t *testing.T) {
	for _, v := range []Version{Version091, Version10, Version10TLS, Version10SASL} {
		h := v.Bytes()
		for i := 0; i < len(h); i++ {
			if _, err := ParseHeader(h[:i]); !errors.Is(err, ErrNeedMore) {
				t.Errorf("%v prefix %d: %v", v, i, err)
			}
		}
		if got, err := ParseHeader(append(h, 'x')); err != nil || got != v {
			t.Errorf("%v: got %v, %v", v, got, err)
		}
	}
}

// otherProtocols are the first bytes of the other protocols a layer4 listener
// sees; none of them may parse as AMQP.
var otherProtocols = map[string][]byte{
	"http":     []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
	"tls":      {0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03},
	"ssh":      []byte("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"),
	"git":      []byte("0032git-upload-pack /project.git\x00host=myserver.com\x00"),
	"zmtp":     {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1, 'N', 'U', 'L', 'L'},
	"foo":      []byte("REQ 1 hello\n"),
	"amqp-0-9": {'A', 'M', 'Q', 'P', 1, 1, 0, 9},
	"amqp-0-8": {'A', 'M', 'Q', 'P', 1, 1, 8, 0},
}

func TestOtherProtocolsAreMalformed(t *testing.T) {
	for name, b := range otherProtocols {
		if v, err := ParseHeader(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: ParseHeader = %v, %v; want ErrMalformed", name, v, err)
		}
	}
}

func TestFrameLimits(t *testing.T) {
	big := AppendFrame(nil, Frame{Type: FrameMethod, Payload: make([]byte, FrameMinSize)})
	if _, _, err := ParseFrame(big, FrameMinSize); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	// The limit applies from the 7-byte header alone, before the payload arrives.
	if _, _, err := ParseFrame(big[:7], FrameMinSize); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame header: %v", err)
	}
	huge := []byte{1, 0, 0, 0xff, 0xff, 0xff, 0xff}
	if _, err := ReadFrame(bytes.NewReader(huge), 131072); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("4 GiB frame: %v", err)
	}
	bad := AppendFrame(nil, Frame{Type: FrameHeartbeat})
	bad[len(bad)-1] = 0
	if _, _, err := ParseFrame(bad, FrameMinSize); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad frame-end: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader(bad), FrameMinSize); !errors.Is(err, ErrMalformed) {
		t.Fatalf("ReadFrame bad frame-end: %v", err)
	}
}

func TestMethodRoundTrip(t *testing.T) {
	methods := []Method{
		testStart(),
		&StartOk{ClientProperties: Table{{"product", "x"}}, Mechanism: "PLAIN", Response: Secret("\x00u\x00p"), Locale: "en_US"},
		&Tune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 60},
		&TuneOk{ChannelMax: 10, FrameMax: 4096},
		&Open{VirtualHost: "/", Capabilities: "", Insist: true},
		&OpenOk{},
		&Close{ReplyCode: 530, ReplyText: "NOT_ALLOWED - vhost x not found", FailingClass: 10, FailingMethod: 40},
		&CloseOk{},
	}
	for _, m := range methods {
		b, err := AppendMethodFrame(nil, 0, m)
		if err != nil {
			t.Fatal(err)
		}
		f, n, err := ParseFrame(b, FrameMinSize)
		if err != nil || n != len(b) {
			t.Fatalf("%T: %v", m, err)
		}
		got, err := ParseMethod(f.Payload)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip %#v, got %#v", m, got)
		}
		// Every truncation of the arguments is malformed, never a panic.
		for i := 4; i < len(f.Payload); i++ {
			if _, err := ParseMethod(f.Payload[:i]); err == nil {
				if _, ok := m.(*CloseOk); !ok {
					t.Errorf("%T truncated to %d parsed", m, i)
				}
			}
		}
	}
}

func TestTableRoundTrip(t *testing.T) {
	tbl := Table{
		{"t", true}, {"b", int8(-1)}, {"B", uint8(2)}, {"s", int16(-3)}, {"u", uint16(4)},
		{"I", int32(-5)}, {"i", uint32(6)}, {"l", int64(-7)}, {"f", float32(1.5)}, {"d", 2.5},
		{"D", Decimal{Scale: 2, Value: 314}}, {"S", "str"}, {"x", []byte{1, 2}},
		{"A", []any{int32(1), "two", Table{{"k", "v"}}}}, {"T", Timestamp(1700000000)},
		{"F", Table{{"nested", false}}}, {"V", nil},
	}
	b, err := AppendTable(nil, tbl)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseTable(b[4:])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, tbl) {
		t.Fatalf("got %#v", got)
	}
	if _, err := AppendTable(nil, Table{{"bad", struct{}{}}}); err == nil {
		t.Fatal("unencodable value accepted")
	}
}

func TestTableDepthIsBounded(t *testing.T) {
	inner := Table{}
	for i := 0; i < maxTableDepth+2; i++ {
		inner = Table{{"n", inner}}
	}
	b, _ := AppendTable(nil, inner)
	if _, err := ParseTable(b[4:]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("deep table: %v", err)
	}
}

func TestUsername(t *testing.T) {
	am, _ := AppendTable(nil, Table{{"LOGIN", "bob"}, {"PASSWORD", "pw"}})
	cases := []struct {
		mech string
		resp []byte
		want string
		ok   bool
	}{
		{"PLAIN", []byte("\x00alice\x00pw"), "alice", true},
		{"PLAIN", []byte("authz\x00alice\x00pw"), "alice", true},
		{"PLAIN", []byte("alice-pw"), "", false},
		{"AMQPLAIN", am[4:], "bob", true},
		{"AMQPLAIN", []byte{5, 'L'}, "", false},
		{"EXTERNAL", nil, "", false},
	}
	for _, c := range cases {
		got, err := Username(c.mech, c.resp)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("%s %q: %q, %v", c.mech, c.resp, got, err)
		}
		if err != nil && bytes.Contains([]byte(err.Error()), []byte("pw")) {
			t.Errorf("error quotes the password: %v", err)
		}
	}
}

func TestSecretNeverFormats(t *testing.T) {
	s := Secret("hunter2")
	so := StartOk{Response: s}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X"} {
		if out := fmt.Sprintf(f, so); bytes.Contains([]byte(out), []byte("hunter2")) || bytes.Contains([]byte(out), []byte("68756e74")) {
			t.Errorf("%s leaks the secret: %s", f, out)
		}
	}
}
