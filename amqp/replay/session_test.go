package replay

import (
	"strings"
	"testing"
)

const sample = `{"time":"2026-12-05T10:00:00Z","session":7,"event":"open","vhost":"/","user":"u"}
{"time":"2026-12-05T10:00:00Z","session":7,"dir":"client","channel":1,"type":"method","method":"channel.open","raw":"ABQACgA="}
{"time":"2026-12-05T10:00:00Z","session":7,"dir":"client","channel":1,"type":"body","body_size":3,"body":"b24="}
{"time":"2026-12-05T10:00:00Z","event":"dropped","lines":3}
{"time":"2026-12-05T10:00:01Z","session":7,"event":"close","ended":"clean"}
`

func TestReadNDJSON(t *testing.T) {
	ss, err := ReadNDJSON(strings.NewReader(sample), "sample")
	if err != nil || len(ss) != 1 || ss[0].ID != 7 || len(ss[0].Frames) != 2 {
		t.Fatalf("%v %+v", err, ss)
	}
	if f := ss[0].Frames[1]; f.Size != 3 || string(f.Payload) != "on" {
		t.Errorf("cut body: %+v", f)
	}
	if _, err := Select(ss, []uint64{8}); err == nil || !strings.Contains(err.Error(), "[7]") {
		t.Errorf("select of a missing session: %v", err)
	}
	// Every truncated prefix either reads or names the offset of its bad line.
	for i := range len(sample) {
		_, err := ReadNDJSON(strings.NewReader(sample[:i]), "sample")
		if err != nil && !strings.Contains(err.Error(), "sample: offset ") {
			t.Fatalf("prefix %d: %v", i, err)
		}
	}
	for name, bad := range map[string]string{
		"frame before open": `{"session":1,"dir":"client","type":"heartbeat"}`,
		"bad dir":           `{"session":1,"event":"open"}` + "\n" + `{"session":1,"dir":"x","type":"heartbeat"}`,
		"bad base64":        `{"session":1,"event":"open"}` + "\n" + `{"session":1,"dir":"client","type":"method","raw":"!"}`,
		"short method":      `{"session":1,"event":"open"}` + "\n" + `{"session":1,"dir":"client","type":"method","raw":"AAE="}`,
		"not json":          "GET / HTTP/1.1",
	} {
		if _, err := ReadNDJSON(strings.NewReader(bad), "f"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzReadNDJSON: any input reads or fails with an error naming an offset.
func FuzzReadNDJSON(f *testing.F) {
	f.Add(sample)
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := ReadNDJSON(strings.NewReader(s), "f"); err != nil && !strings.Contains(err.Error(), "f: offset ") {
			t.Fatalf("error without an offset: %v", err)
		}
	})
}
