package amqp

import (
	"bytes"
	"fmt"
)

// Username returns the user a Start-Ok authenticates as, for the PLAIN
// (RFC 4616: authzid NUL authcid NUL passwd) and AMQPLAIN (a field table
// body with LOGIN and PASSWORD) mechanisms. The password is never returned,
// and errors never quote the response.
func Username(mechanism string, response []byte) (string, error) {
	switch mechanism {
	case "PLAIN":
		parts := bytes.SplitN(response, []byte{0}, 3)
		if len(parts) != 3 {
			return "", fmt.Errorf("%w: PLAIN response is not authzid NUL authcid NUL passwd", ErrMalformed)
		}
		return string(parts[1]), nil
	case "AMQPLAIN":
		t, err := ParseTable(response)
		if err != nil {
			return "", fmt.Errorf("%w: AMQPLAIN response is not a field table", ErrMalformed)
		}
		login, ok := t.Get("LOGIN")
		if !ok {
			return "", fmt.Errorf("%w: AMQPLAIN response has no LOGIN", ErrMalformed)
		}
		switch v := login.(type) {
		case string:
			return v, nil
		case []byte:
			return string(v), nil
		}
		return "", fmt.Errorf("%w: AMQPLAIN LOGIN is a %T, want a string", ErrMalformed, login)
	}
	return "", fmt.Errorf("unsupported SASL mechanism %q", mechanism)
}
