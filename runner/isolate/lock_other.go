//go:build !unix

package isolate

import "os"

// lockUser: job users exist on unix only.
func lockUser(string, *User) (*os.File, error) { return nil, nil }

func makeLockDir(string) error { return nil }
