package config

import (
	"fmt"
	"regexp"
	"strconv"
)

// maxPool bounds one range, so a typo cannot ask for a million users.
const maxPool = 1024

var userRange = regexp.MustCompile(`^(.*)\{(\d+)\.\.(\d+)\}(.*)$`)

// ExpandUsers expands provenix.job_users: each entry is a user name or a
// name with one range, "provenix-job-{0..3}" → provenix-job-0 … -3. A name
// given twice is an error: two jobs would share it.
func ExpandUsers(entries []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(n string) error {
		if n == "" || n == "root" {
			return fmt.Errorf("%q cannot run jobs", n)
		}
		if seen[n] {
			return fmt.Errorf("user %s listed twice", n)
		}
		seen[n] = true
		out = append(out, n)
		return nil
	}
	for _, e := range entries {
		m := userRange.FindStringSubmatch(e)
		if m == nil {
			if err := add(e); err != nil {
				return nil, err
			}
			continue
		}
		lo, err1 := strconv.Atoi(m[2])
		hi, err2 := strconv.Atoi(m[3])
		if err1 != nil || err2 != nil || hi < lo || hi-lo >= maxPool {
			return nil, fmt.Errorf("%q: want {low..high} with low ≤ high and at most %d users", e, maxPool)
		}
		for i := lo; i <= hi; i++ {
			if err := add(m[1] + strconv.Itoa(i) + m[4]); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}
