//go:build linux || darwin

package capture

import (
	"errors"
	"net"
)

// peerOf asks the kernel who connected, through the system's peerCred.
func peerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("not a Unix socket connection")
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var p Peer
	var cerr error
	if err := rc.Control(func(fd uintptr) { p, cerr = peerCred(int(fd)) }); err != nil {
		return Peer{}, err
	}
	return p, cerr
}
