// Package tcpinfo reads a socket's byte counters from the kernel, for live
// byte counts of relayed sessions (whose copies report only at the end).
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
	control(c, func(fd int) { received, sent = FDBytes(fd) })
	return received, sent
}

// FDBytes is Bytes for the TCP socket fd.
func FDBytes(fd int) (received, sent uint64) {
	if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
		return info.Bytes_received, info.Bytes_sent - info.Bytes_retrans
	}
	return 0, 0
}

// Unsent returns how many bytes written to c's socket the peer has not
// acknowledged yet (SIOCOUTQ: unsent plus unacknowledged), or 0 where it
// cannot be read.
func Unsent(c net.Conn) int {
	var n int
	control(c, func(fd int) {
		if q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err == nil {
			n = q
		}
	})
	return n
}

// control runs fn on the file descriptor of the TCP socket under c, seeing
// through TLS and layer4 wrappers; it does nothing for other connections.
func control(c net.Conn, fn func(fd int)) {
	for {
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
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) { fn(int(fd)) })
}
