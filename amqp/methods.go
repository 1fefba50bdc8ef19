package amqp

import (
	"encoding/binary"
	"fmt"
)

// ClassConnection is the connection class (spec 1.4.2).
const ClassConnection = 10

// Connection-class method ids (spec 1.4.2).
const (
	MethodStart    = 10
	MethodStartOk  = 11
	MethodSecure   = 20
	MethodSecureOk = 21
	MethodTune     = 30
	MethodTuneOk   = 31
	MethodOpen     = 40
	MethodOpenOk   = 41
	MethodClose    = 50
	MethodCloseOk  = 51
)

// Reply codes (spec 1.2 "Constants") that the proxy sends.
const (
	ReplySuccess          = 200
	ReplyConnectionForced = 320
	ReplyInvalidPath      = 402
	ReplyAccessRefused    = 403
	ReplyFrameError       = 501
	ReplySyntaxError      = 502
	ReplyCommandInvalid   = 503
	ReplyUnexpectedFrame  = 505
	ReplyResourceError    = 506
	ReplyNotAllowed       = 530
	ReplyNotImplemented   = 540
	ReplyInternalError    = 541
)

// Method is a decoded method frame payload.
type Method interface {
	// MethodID returns the class and method ids.
	MethodID() (class, method uint16)
	appendArgs(dst []byte) ([]byte, error)
}

// Start is Connection.Start, sent by the server after the protocol header.
type Start struct {
	VersionMajor, VersionMinor uint8
	ServerProperties           Table
	Mechanisms                 string // space-separated, e.g. "PLAIN AMQPLAIN"
	Locales                    string
}

// StartOk is Connection.Start-Ok. Response carries the client's password.
type StartOk struct {
	ClientProperties Table
	Mechanism        string
	Response         Secret
	Locale           string
}

// Tune is Connection.Tune; TuneOk is Connection.Tune-Ok with the same fields.
type Tune struct {
	ChannelMax uint16
	FrameMax   uint32
	Heartbeat  uint16
}

// TuneOk is Connection.Tune-Ok.
type TuneOk Tune

// Open is Connection.Open. Capabilities and Insist are reserved fields that
// clients still send; they are replayed unchanged.
type Open struct {
	VirtualHost  string
	Capabilities string
	Insist       bool
}

// OpenOk is Connection.Open-Ok.
type OpenOk struct{ KnownHosts string }

// Close is Connection.Close.
type Close struct {
	ReplyCode     uint16
	ReplyText     string
	FailingClass  uint16
	FailingMethod uint16
}

// CloseOk is Connection.Close-Ok.
type CloseOk struct{}

// OtherMethod is any method this package does not decode.
type OtherMethod struct {
	Class, Method uint16
	Args          []byte
}

func (*Start) MethodID() (uint16, uint16)         { return ClassConnection, MethodStart }
func (*StartOk) MethodID() (uint16, uint16)       { return ClassConnection, MethodStartOk }
func (*Tune) MethodID() (uint16, uint16)          { return ClassConnection, MethodTune }
func (*TuneOk) MethodID() (uint16, uint16)        { return ClassConnection, MethodTuneOk }
func (*Open) MethodID() (uint16, uint16)          { return ClassConnection, MethodOpen }
func (*OpenOk) MethodID() (uint16, uint16)        { return ClassConnection, MethodOpenOk }
func (*Close) MethodID() (uint16, uint16)         { return ClassConnection, MethodClose }
func (*CloseOk) MethodID() (uint16, uint16)       { return ClassConnection, MethodCloseOk }
func (m *OtherMethod) MethodID() (uint16, uint16) { return m.Class, m.Method }

// MethodName names a method for error texts, e.g. "connection.tune-ok".
func MethodName(class, method uint16) string {
	if class == ClassConnection {
		if n, ok := connectionMethodNames[method]; ok {
			return "connection." + n
		}
	}
	return fmt.Sprintf("method %d/%d", class, method)
}

var connectionMethodNames = map[uint16]string{
	MethodStart: "start", MethodStartOk: "start-ok", MethodSecure: "secure",
	MethodSecureOk: "secure-ok", MethodTune: "tune", MethodTuneOk: "tune-ok",
	MethodOpen: "open", MethodOpenOk: "open-ok", MethodClose: "close", MethodCloseOk: "close-ok",
}

// ParseMethod decodes a method frame payload. Connection-class methods other
// than Secure / Secure-Ok are decoded into their types; everything else comes
// back as *OtherMethod with its arguments aliasing payload.
func ParseMethod(payload []byte) (Method, error) {
	r := &reader{b: payload}
	class, method := r.u16("class-id"), r.u16("method-id")
	if r.err != nil {
		return nil, r.err
	}
	var m Method
	if class == ClassConnection {
		m = parseConnectionMethod(r, method)
	}
	if m == nil {
		return &OtherMethod{Class: class, Method: method, Args: r.b}, nil
	}
	if err := r.done(MethodName(class, method)); err != nil {
		return nil, err
	}
	return m, nil
}

func parseConnectionMethod(r *reader, method uint16) Method {
	switch method {
	case MethodStart:
		return &Start{VersionMajor: r.u8("version-major"), VersionMinor: r.u8("version-minor"),
			ServerProperties: r.table(0), Mechanisms: r.longstr("mechanisms"), Locales: r.longstr("locales")}
	case MethodStartOk:
		return &StartOk{ClientProperties: r.table(0), Mechanism: r.shortstr("mechanism"),
			Response: Secret(append([]byte(nil), r.longbytes("response")...)), Locale: r.shortstr("locale")}
	case MethodTune:
		return &Tune{ChannelMax: r.u16("channel-max"), FrameMax: r.u32("frame-max"), Heartbeat: r.u16("heartbeat")}
	case MethodTuneOk:
		return &TuneOk{ChannelMax: r.u16("channel-max"), FrameMax: r.u32("frame-max"), Heartbeat: r.u16("heartbeat")}
	case MethodOpen:
		return &Open{VirtualHost: r.shortstr("virtual-host"), Capabilities: r.shortstr("capabilities"),
			Insist: r.u8("insist")&1 != 0}
	case MethodOpenOk:
		return &OpenOk{KnownHosts: r.shortstr("known-hosts")}
	case MethodClose:
		return &Close{ReplyCode: r.u16("reply-code"), ReplyText: r.shortstr("reply-text"),
			FailingClass: r.u16("class-id"), FailingMethod: r.u16("method-id")}
	case MethodCloseOk:
		return &CloseOk{}
	}
	return nil
}

func (m *Start) appendArgs(dst []byte) ([]byte, error) {
	dst = append(dst, m.VersionMajor, m.VersionMinor)
	dst, err := AppendTable(dst, m.ServerProperties)
	if err != nil {
		return nil, err
	}
	dst = appendLongstr(dst, []byte(m.Mechanisms))
	return appendLongstr(dst, []byte(m.Locales)), nil
}

func (m *StartOk) appendArgs(dst []byte) ([]byte, error) {
	dst, err := AppendTable(dst, m.ClientProperties)
	if err != nil {
		return nil, err
	}
	dst = appendShortstr(dst, m.Mechanism)
	dst = appendLongstr(dst, m.Response)
	return appendShortstr(dst, m.Locale), nil
}

func (m *Tune) appendArgs(dst []byte) ([]byte, error) {
	dst = binary.BigEndian.AppendUint16(dst, m.ChannelMax)
	dst = binary.BigEndian.AppendUint32(dst, m.FrameMax)
	return binary.BigEndian.AppendUint16(dst, m.Heartbeat), nil
}

func (m *TuneOk) appendArgs(dst []byte) ([]byte, error) { return (*Tune)(m).appendArgs(dst) }

func (m *Open) appendArgs(dst []byte) ([]byte, error) {
	dst = appendShortstr(dst, m.VirtualHost)
	dst = appendShortstr(dst, m.Capabilities)
	insist := byte(0)
	if m.Insist {
		insist = 1
	}
	return append(dst, insist), nil
}

func (m *OpenOk) appendArgs(dst []byte) ([]byte, error) {
	return appendShortstr(dst, m.KnownHosts), nil
}

func (m *Close) appendArgs(dst []byte) ([]byte, error) {
	dst = binary.BigEndian.AppendUint16(dst, m.ReplyCode)
	dst = appendShortstr(dst, m.ReplyText)
	dst = binary.BigEndian.AppendUint16(dst, m.FailingClass)
	return binary.BigEndian.AppendUint16(dst, m.FailingMethod), nil
}

func (*CloseOk) appendArgs(dst []byte) ([]byte, error) { return dst, nil }

func (m *OtherMethod) appendArgs(dst []byte) ([]byte, error) { return append(dst, m.Args...), nil }

// AppendMethodFrame appends a method frame carrying m on channel ch.
func AppendMethodFrame(dst []byte, ch uint16, m Method) ([]byte, error) {
	class, method := m.MethodID()
	payload := binary.BigEndian.AppendUint16(nil, class)
	payload = binary.BigEndian.AppendUint16(payload, method)
	payload, err := m.appendArgs(payload)
	if err != nil {
		return nil, err
	}
	return AppendFrame(dst, Frame{Type: FrameMethod, Channel: ch, Payload: payload}), nil
}

// Secret is a byte string that formats as "[redacted]" so that it never
// reaches a log line or an error text by accident.
type Secret []byte

func (Secret) String() string   { return "[redacted]" }
func (Secret) GoString() string { return "[redacted]" }

// Format implements fmt.Formatter for every verb, including %x and %q.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte("[redacted]")) }
