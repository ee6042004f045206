//go:build !linux

package runner

import (
	"errors"
	"syscall"
)

// intoCgroup: cgroups exist on Linux only.
func intoCgroup(*syscall.SysProcAttr, int) {}

// privateMounts: mount namespaces exist on Linux only.
func privateMounts(*syscall.SysProcAttr) {}

// probePrivateMounts: mount namespaces exist on Linux only.
func probePrivateMounts() error { return errors.New("no mount namespaces on this system") }
