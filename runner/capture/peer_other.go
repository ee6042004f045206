//go:build !linux && !darwin

package capture

import (
	"errors"
	"net"
)

// peerOf cannot tell here: a bound socket refuses every connection.
func peerOf(net.Conn) (Peer, error) {
	return Peer{}, errors.New("peer credentials are not available on this system")
}
