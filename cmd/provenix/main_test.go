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
	os.Exit(m.Run())
}
