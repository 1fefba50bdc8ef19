package l4amqp

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// The NDJSON format: one JSON object a line. A session's lines are an
// "open" event (client, broker, vhost, user, connection_name, route), its
// handshake and relayed frames, and a "close" event (ended). A frame line:
//
//	{"time": RFC 3339, "session": id, "dir": "client"|"broker", "channel": n,
//	 "type": "method"|"header"|"body"|"heartbeat"|"malformed",
//	 "method": "basic.publish", "args": {...}           method frames
//	 "class": "basic", "body_size": n, "properties": {...}  content headers
//	 "body_size": n, "body": base64, "body_kept": n     body frames
//	 "offset": n, "error": "..."}                       malformed frames
//
// Method and header lines also carry "raw": the frame's payload, base64,
// exactly as relayed (Start-Ok and Update-Secret with their secrets
// replaced), which is what amqp-replay re-sends.
// Arguments and properties keep wire order; byte strings are base64;
// timestamps are Unix seconds.

// appendEventLine appends a session event line.
func appendEventLine(dst []byte, m *sessionMeta, event string, now time.Time, extra ...string) []byte {
	dst = appendLineStart(dst, m, now)
	dst = appendKey(dst, "event")
	dst = strconv.AppendQuote(dst, event)
	if event == "open" {
		for _, kv := range [][2]string{{"client", addrString(m.Client)}, {"broker", addrString(m.Broker)},
			{"vhost", m.VHost}, {"user", m.User}, {"mechanism", m.Mechanism},
			{"connection_name", m.ConnectionName}, {"route", m.Route}} {
			dst = appendKey(dst, kv[0])
			dst = appendJSONString(dst, kv[1])
		}
	}
	for i := 0; i+1 < len(extra); i += 2 {
		dst = appendKey(dst, extra[i])
		dst = appendJSONString(dst, extra[i+1])
	}
	return append(dst, "}\n"...)
}

func addrString(a interface{ String() string }) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func appendLineStart(dst []byte, m *sessionMeta, now time.Time) []byte {
	dst = append(dst, `{"time":"`...)
	dst = now.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","session":`...)
	return strconv.AppendUint(dst, m.ID, 10)
}

func appendKey(dst []byte, k string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, k...)
	return append(dst, '"', ':')
}

// appendFrameLine appends the line of one frame.
func appendFrameLine(dst []byte, m *sessionMeta, f *amqp.FrameInfo, now time.Time) []byte {
	dst = appendLineStart(dst, m, now)
	dst = appendKey(dst, "dir")
	dst = strconv.AppendQuote(dst, f.Dir.String())
	dst = appendKey(dst, "channel")
	dst = strconv.AppendUint(dst, uint64(f.Channel), 10)
	dst = appendKey(dst, "type")
	switch {
	case f.Err != nil:
		dst = append(dst, `"malformed"`...)
		dst = appendKey(dst, "offset")
		dst = strconv.AppendInt(dst, f.Offset, 10)
		dst = appendKey(dst, "error")
		dst = appendJSONString(dst, f.Err.Error())
	case f.Type == amqp.FrameMethod:
		dst = append(dst, `"method"`...)
		dst = appendKey(dst, "method")
		dst = strconv.AppendQuote(dst, amqp.FullMethodName(f.Class, f.Method))
		dst = appendRaw(dst, f.Payload)
		dst = appendKey(dst, "args")
		if _, _, args, err := amqp.DecodeArgs(f.Payload); err == nil {
			dst = appendTable(dst, args)
		} else {
			dst = append(dst, "null"...)
			dst = appendKey(dst, "error")
			dst = appendJSONString(dst, err.Error())
		}
	case f.Type == amqp.FrameHeader:
		dst = append(dst, `"header"`...)
		dst = appendRaw(dst, f.Payload)
		class, size, props, err := amqp.ParseContentHeader(f.Payload)
		dst = appendKey(dst, "class")
		dst = strconv.AppendQuote(dst, className(class))
		dst = appendKey(dst, "body_size")
		dst = strconv.AppendUint(dst, size, 10)
		dst = appendKey(dst, "properties")
		if err == nil {
			dst = appendTable(dst, props)
		} else {
			dst = append(dst, "null"...)
			dst = appendKey(dst, "error")
			dst = appendJSONString(dst, err.Error())
		}
	case f.Type == amqp.FrameBody:
		dst = append(dst, `"body"`...)
		dst = appendKey(dst, "body_size")
		dst = strconv.AppendUint(dst, uint64(f.Size), 10)
		if len(f.Payload) > 0 {
			dst = appendKey(dst, "body")
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, f.Payload)
			dst = append(dst, '"')
			dst = appendKey(dst, "body_kept")
			dst = strconv.AppendInt(dst, int64(len(f.Payload)), 10)
		}
	default:
		dst = append(dst, `"heartbeat"`...)
	}
	return append(dst, "}\n"...)
}

func appendRaw(dst, payload []byte) []byte {
	dst = appendKey(dst, "raw")
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, payload)
	return append(dst, '"')
}

func className(class uint16) string {
	switch class {
	case amqp.ClassBasic:
		return "basic"
	case amqp.ClassConnection:
		return "connection"
	}
	return strconv.Itoa(int(class))
}

// appendTable appends a field table as a JSON object in wire order.
func appendTable(dst []byte, t amqp.Table) []byte {
	dst = append(dst, '{')
	for i, f := range t {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, f.Name)
		dst = append(dst, ':')
		dst = appendValue(dst, f.Value)
	}
	return append(dst, '}')
}

func appendValue(dst []byte, v any) []byte {
	switch v := v.(type) {
	case amqp.Table:
		return appendTable(dst, v)
	case []any:
		dst = append(dst, '[')
		for i, e := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendValue(dst, e)
		}
		return append(dst, ']')
	case []byte:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, v)
		return append(dst, '"')
	case amqp.Secret:
		return append(dst, `"[redacted]"`...)
	case amqp.Timestamp:
		return strconv.AppendUint(dst, uint64(v), 10)
	case amqp.Decimal:
		return strconv.AppendFloat(dst, float64(v.Value)/math.Pow10(int(v.Scale)), 'g', -1, 64)
	case float32:
		return appendFloat(dst, float64(v))
	case float64:
		return appendFloat(dst, v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return append(dst, "null"...)
	}
	return append(dst, b...)
}

// appendFloat writes NaN and the infinities, which JSON lacks, as null.
func appendFloat(dst []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64)
}

func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}
