//go:build unix

package local

import (
	"fmt"
	"syscall"

	"github.com/dustin/go-humanize"
)

// freeSpace describes the space left to unprivileged writers on dir's
// filesystem, for error messages.
func freeSpace(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return "free space unknown"
	}
	// The field types differ between systems (Bsize is int64 on Linux,
	// uint32 on macOS); both fit uint64.
	return fmt.Sprintf("%s free, %d inodes free", humanize.IBytes(uint64(st.Bavail)*uint64(st.Bsize)), uint64(st.Ffree))
}
