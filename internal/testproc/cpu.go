package testproc

import (
	"syscall"
	"testing"
	"time"
)

// SelfCPU is the CPU time (user and system) this process used so far: a
// benchmark reports CPU per operation from two readings, which varies
// less with the machine's other load than the wall clock does.
func SelfCPU(t testing.TB) time.Duration {
	t.Helper()
	user, sys := SelfCPUSplit(t)
	return user + sys
}

// SelfCPUSplit is SelfCPU in user space and in the kernel.
func SelfCPUSplit(t testing.TB) (user, sys time.Duration) {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
