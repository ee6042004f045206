//go:build !linux

package testnix

import (
	"errors"
	"runtime"
)

// mountOnce: the Nix version chroots exist on Linux only (Versions fails
// before it gets here elsewhere).
func mountOnce(src, dst, fstype string) error {
	return errors.New("chroot mounts need Linux, not " + runtime.GOOS)
}
