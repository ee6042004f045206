//go:build !linux

package runner

import "syscall"

// intoCgroup: cgroups exist on Linux only.
func intoCgroup(*syscall.SysProcAttr, int) {}
