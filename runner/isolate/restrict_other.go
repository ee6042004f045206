//go:build !linux

package isolate

import "fmt"

// RestrictDir is Linux-only (POSIX ACLs through system.posix_acl_access).
func RestrictDir(dir string, _ []uint32) error {
	return fmt.Errorf("%w: restricting %s to some job users", ErrUnsupported, dir)
}
