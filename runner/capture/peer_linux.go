package capture

import "syscall"

// peerCred reads SO_PEERCRED: the credentials at connect time, which the
// peer cannot forge.
func peerCred(fd int) (Peer, error) {
	cred, err := syscall.GetsockoptUcred(fd, syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	if err != nil {
		return Peer{}, err
	}
	return Peer{UID: int(cred.Uid), PID: int(cred.Pid)}, nil
}
