package main

import (
	"os"
	"testing"
)

// envExecMain makes the test binary act as the provenix command, so tests
// can start provenix processes (`up`, `cache-push`) and kill them without
// a `go build` first.
const envExecMain = "PROVENIX_TEST_EXEC_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envExecMain) == "1" {
		main() // exits
	}
	// The runners these tests start share their jobs' windows with each
	// other, as runners of one host do, and not with other packages'
	// tests running at the same time.
	if os.Getenv(envJobWindowsDir) == "" {
		dir, err := os.MkdirTemp("", "provenix-job-windows-*")
		if err != nil {
			panic(err)
		}
		os.Setenv(envJobWindowsDir, dir)
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}
