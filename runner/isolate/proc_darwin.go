package isolate

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
)

// PIDsOf lists the processes of uid (pgrep -U matches the effective uid).
func PIDsOf(uid uint32) ([]int, error) {
	out, err := exec.Command("/usr/bin/pgrep", "-U", strconv.FormatUint(uint64(uid), 10)).Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil, nil // none
	}
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// KillUID sends SIGKILL to every process of uid (pkill -U).
func KillUID(uid uint32) error {
	if uid == 0 {
		return errors.New("isolate: refusing to kill uid 0")
	}
	err := exec.Command("/usr/bin/pkill", "-KILL", "-U", strconv.FormatUint(uint64(uid), 10)).Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil // nothing matched
	}
	return err
}
