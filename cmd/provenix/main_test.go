package main

import (
	"os"
	"testing"
)

// reexecEnv makes the test binary behave as the provenix command (see
// TestMain), so tests can run `provenix up` as a separate process without
// building the binary first.
const reexecEnv = "PROVENIX_TEST_REEXEC"

func TestMain(m *testing.M) {
	if os.Getenv(reexecEnv) == "1" {
		main() // exits
	}
	os.Exit(m.Run())
}
