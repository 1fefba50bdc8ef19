package stream

import "sync"

// ForgeData builds a well-formed data message carrying a token nobody was
// given: what an attacker with publish rights could send.
func ForgeData(seq uint64, payload []byte) []byte {
	b := appendHeader(nil, header{kind: kindData, token: newToken(), seq: seq, limit: 1 << 30})
	return append(b, payload...)
}

// LossyConfig returns cfg whose ends silently drop every nth outgoing data
// message the first time it is sent, as a broker losing a publish would.
func LossyConfig(cfg Config, n int) Config {
	var mu sync.Mutex
	count := 0
	seen := map[uint64]bool{}
	cfg.lose = func(msg []byte) bool {
		h, _, err := parseMessage(msg)
		if err != nil || h.kind != kindData {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if seen[h.seq] {
			return false
		}
		seen[h.seq] = true
		count++
		return count%n == 0
	}
	return cfg
}

// ForgeConnect builds a well-formed connect request: sent without a
// reply_to, a listener must reject it.
func ForgeConnect() []byte {
	tok := newToken()
	b := appendHeader(nil, header{kind: kindConnect, limit: 1 << 20})
	return append(b, tok[:]...)
}
