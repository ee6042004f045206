//go:build unix

package usage

import (
	"os"
	"runtime"
	"syscall"
)

// maxRSSOf reads ru_maxrss: bytes on Darwin, KiB elsewhere.
func maxRSSOf(ps *os.ProcessState) int64 {
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok || ru == nil {
		return 0
	}
	if runtime.GOOS == "darwin" {
		return int64(ru.Maxrss)
	}
	return int64(ru.Maxrss) * 1024
}
