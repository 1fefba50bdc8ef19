package lookup

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAnswer(t *testing.T) {
	for _, tc := range []struct {
		in      string
		addrs   []string
		refuse  string
		farm    string
		wantErr string
	}{
		{in: "10.0.0.5:9418", addrs: []string{"10.0.0.5:9418"}},
		{in: " a.internal:1, [::1]:5672 \n", addrs: []string{"a.internal:1", "[::1]:5672"}},
		{in: `{"to": ["127.0.0.1:5672", "127.0.0.2:5672"]}`, addrs: []string{"127.0.0.1:5672", "127.0.0.2:5672"}},
		{in: `{"refuse": "tenant suspended"}`, refuse: "tenant suspended"},
		{in: "{\"refuse\": \"bad\\u0000\\nreason\"}", refuse: "bad  reason"},
		{in: `{"refuse": "   "}`, refuse: "refused by the lookup service"},
		{in: "farm:blue", farm: "blue"},
		{in: " farm:eu-west_2.a \n", farm: "eu-west_2.a"},
		{in: `{"farm": "blue"}`, farm: "blue"},
		{in: "farm:", wantErr: "empty"},
		{in: "farm:a b", wantErr: "holds"},
		{in: "farm:a,b:1", wantErr: "holds"},
		{in: "farm:" + strings.Repeat("x", MaxFarmName+1), wantErr: "longer than"},
		{in: `{"farm": "blue", "to": ["a:1"]}`, wantErr: "more than one"},
		{in: `{"farm": "blue", "refuse": "x"}`, wantErr: "more than one"},
		{in: `{"farm": "../x"}`, wantErr: "holds"},
		{in: "", wantErr: "empty"},
		{in: "   \n", wantErr: "empty"},
		{in: "{}", wantErr: "no address, farm or refusal"},
		{in: `{"to": []}`, wantErr: "no address, farm or refusal"},
		{in: `{"to": ["a:1"], "refuse": "x"}`, wantErr: "more than one"},
		{in: `{"to": ["a:1"]} {}`, wantErr: "after the JSON"},
		{in: `{"to": ["a:1"], "weight": 3}`, wantErr: "unknown field"},
		{in: `{"to": "a:1"}`, wantErr: "not {"},
		{in: `{"to": ["a/b:1"]}`, wantErr: "no valid host"},
		{in: `{"to": ["a:0"]}`, wantErr: "no valid port"},
		{in: "a:1,", wantErr: "not host:port"},
		{in: "a:99999", wantErr: "no valid port"},
		{in: "alice", wantErr: "not host:port"},
		{in: "<html>oops</html>", wantErr: "not host:port"},
		{in: strings.Repeat("a:1,", MaxAnswerAddrs) + "a:1", wantErr: "more than"},
		{in: strings.Repeat(" ", MaxAnswerLen) + "x" + strings.Repeat(" ", 10) + "y", wantErr: "longer than"},
		// Other protocols' first bytes are not answers.
		{in: "AMQP\x00\x00\x09\x01", wantErr: "not host:port"},
		{in: "0032git-upload-pack /x.git\x00host=h\x00", wantErr: "not host:port"},
	} {
		a, err := ParseAnswer([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, ErrBadAnswer) {
				t.Errorf("ParseAnswer(%.40q) = %v, %v; want an ErrBadAnswer containing %q", tc.in, a, err, tc.wantErr)
			}
			continue
		}
		if err != nil || fmt.Sprint(a.Addrs) != fmt.Sprint(tc.addrs) || a.Refuse != tc.refuse || a.Farm != tc.farm {
			t.Errorf("ParseAnswer(%q) = %+v, %v; want %v %q %q", tc.in, a, err, tc.addrs, tc.refuse, tc.farm)
		}
	}
}

func TestParseAnswerLongReasonIsCut(t *testing.T) {
	a, err := ParseAnswer([]byte(`{"refuse": "` + strings.Repeat("é", 300) + `"}`))
	if err != nil || len(a.Refuse) > MaxRefuseReason || !strings.HasPrefix(a.Refuse, "éé") {
		t.Fatalf("got %d bytes %q, %v", len(a.Refuse), a.Refuse, err)
	}
}

// TestParseAnswerPrefixes feeds every prefix of good answers: each is a
// good answer or an ErrBadAnswer, never a panic.
func TestParseAnswerPrefixes(t *testing.T) {
	for _, full := range []string{`{"to": ["127.0.0.1:5672", "[::1]:9418"]}`, `{"refuse": "no"}`, "a.internal:9418,b:1", `{"farm": "blue"}`, "farm:blue"} {
		for i := range len(full) {
			if _, err := ParseAnswer([]byte(full[:i])); err != nil && !errors.Is(err, ErrBadAnswer) {
				t.Errorf("prefix %q: %v is not an ErrBadAnswer", full[:i], err)
			}
		}
	}
}

func FuzzParseAnswer(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/fuzz/FuzzParseAnswer/*")
	if len(seeds) == 0 {
		f.Fatal("no seeds in testdata/fuzz/FuzzParseAnswer")
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAnswer(b)
		if err != nil {
			return
		}
		set := 0
		for _, ok := range []bool{len(a.Addrs) > 0, a.Refuse != "", a.Farm != ""} {
			if ok {
				set++
			}
		}
		if set != 1 {
			t.Fatalf("%q: an answer must be addresses, a farm or a refusal: %+v", b, a)
		}
		if a.Farm != "" && CheckFarmName(a.Farm) != nil {
			t.Fatalf("%q: answer names a bad farm %q", b, a.Farm)
		}
		for _, addr := range a.Addrs {
			if CheckAddress(addr) != nil {
				t.Fatalf("%q: answer holds a bad address %q", b, addr)
			}
		}
		if len(a.Refuse) > MaxRefuseReason {
			t.Fatalf("reason too long: %d", len(a.Refuse))
		}
	})
}
