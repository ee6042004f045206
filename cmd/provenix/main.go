// Command provenix builds Nix derivations with signed provenance, publishes
// them over NATS JetStream, gates them into a Nix binary cache and verifies
// what comes out. Run `provenix --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
