package isolate

import "time"

// Stats is what the processes of a cgroup used, for usage accounting.
type Stats struct {
	// CPU is user plus system time of every process that ran in the
	// cgroup (cpu.stat usage_usec: exited and killed ones included).
	CPU time.Duration
	// PeakMemory is memory.peak in bytes: the most the cgroup's
	// processes held together. 0 when the memory controller is not
	// enabled for the cgroup (a hybrid hierarchy, or not delegated) or
	// the kernel is older than 5.19.
	PeakMemory int64
}
