//go:build !unix

package capture

import (
	"errors"
	"os"
)

func lockFile(*os.File, bool) error { return errors.New("capture: no flock on this system") }

func heldByAnother(string) bool { return true }

func ownedByMe(os.FileInfo) bool { return true }
