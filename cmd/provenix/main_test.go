package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"
)

// envExecMain makes the test binary act as the provenix command, so tests
// can start provenix processes (and kill them) without a `go build`.
const envExecMain = "PROVENIX_TEST_EXEC_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envExecMain) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}
