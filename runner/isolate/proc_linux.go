package isolate

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// PIDsOf lists the live processes (zombies excepted: they run nothing)
// whose real, effective, saved or file-system uid is uid.
func PIDsOf(uid uint32) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	want := strconv.FormatUint(uint64(uid), 10)
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue // gone meanwhile
		}
		zombie, match := false, false
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "State:"):
				zombie = strings.Contains(line, "Z (zombie)") || strings.Contains(line, "X (dead)")
			case strings.HasPrefix(line, "Uid:"):
				for _, f := range strings.Fields(line)[1:] {
					if f == want {
						match = true
					}
				}
			}
		}
		if match && !zombie {
			out = append(out, pid)
		}
	}
	return out, nil
}

// KillUID sends SIGKILL to every process of uid with one kill(-1) made as
// that uid: the kernel walks all processes at once, so no fork can slip
// between a listing and the kill. Only one locked OS thread of the runner
// takes the uid (setresuid is per thread for the raw syscall, and the Go
// runtime spawns new threads from a clean template while a thread is
// locked); the thread is never unlocked, so it is discarded afterwards
// even if restoring root failed.
func KillUID(uid uint32) error {
	if uid == 0 {
		return syscall.EPERM
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The saved uid stays 0 so the thread could return to root, and
		// permitted capabilities are kept; effective ones (CAP_KILL) are
		// dropped while euid is not 0, so kill(-1) reaches only uid's
		// processes, never the runner itself.
		if _, _, e := syscall.RawSyscall(sysSetresuid, uintptr(uid), uintptr(uid), 0); e != 0 {
			errc <- e
			return
		}
		minus1 := -1
		_, _, e := syscall.RawSyscall(syscall.SYS_KILL, uintptr(minus1), uintptr(syscall.SIGKILL), 0)
		_, _, _ = syscall.RawSyscall(sysSetresuid, 0, 0, 0)
		if e != 0 && e != syscall.ESRCH {
			errc <- e
			return
		}
		errc <- nil
	}()
	return <-errc
}
