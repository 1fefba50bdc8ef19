// Package tcpinfo reads a socket's byte counters from the kernel, for live
// byte counts of spliced sessions (whose copies report only at the end).
package tcpinfo

import (
	"net"

	"github.com/mholt/caddy-l4/layer4"
	"golang.org/x/sys/unix"
)

// Bytes returns what the kernel received on c's socket and what it sent
// (less retransmissions) — for a TLS connection, the encrypted bytes — or
// zeros where TCP_INFO is not available.
func Bytes(c net.Conn) (received, sent uint64) {
	for { // see through TLS and layer4 wrappers down to the socket
		if lc, ok := c.(*layer4.Connection); ok {
			c = lc.Conn
			continue
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, 0
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, 0
	}
	_ = raw.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			received, sent = info.Bytes_received, info.Bytes_sent-info.Bytes_retrans
		}
	})
	return received, sent
}
