package capture

import (
	"errors"
	"net"

	"golang.org/x/sys/unix"
)

// peerOf asks the kernel who connected (LOCAL_PEERCRED, LOCAL_PEERPID).
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
	if err := rc.Control(func(fd uintptr) {
		var x *unix.Xucred
		if x, cerr = unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED); cerr != nil {
			return
		}
		p.UID = int(x.Uid)
		p.PID, _ = unix.GetsockoptInt(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	}); err != nil {
		return Peer{}, err
	}
	return p, cerr
}
