package usage

import (
	"os"
	"time"

	"codeberg.org/provenix/provenix/builder"
)

// Process is what a reaped child process used, from its rusage: CPU is
// user plus system time of it and the descendants it waited for (not of
// processes it orphaned), MaxRSS the largest of their maximum resident
// sets, in bytes (0 where the system does not say).
func Process(ps *os.ProcessState) (cpu time.Duration, maxRSS int64) {
	if ps == nil {
		return 0, 0
	}
	return ps.UserTime() + ps.SystemTime(), maxRSSOf(ps)
}

// PublishedBytes is what pubs account for: the NAR sizes of the outputs
// they attested (Record.BytesBuilt) and the bytes they staged
// (Record.BytesStaged).
func PublishedBytes(pubs []builder.Published) (built, staged int64) {
	for _, p := range pubs {
		staged += p.Staged
		for _, o := range p.Outputs {
			built += int64(o.NarSize)
		}
	}
	return built, staged
}
