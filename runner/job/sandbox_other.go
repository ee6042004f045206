//go:build !linux

package job

import "errors"

// enterSandbox: mount namespaces exist on Linux only; the runner never
// asks for a sandbox elsewhere.
func enterSandbox(*Sandbox) error {
	return errors.New("a private /tmp needs Linux")
}
