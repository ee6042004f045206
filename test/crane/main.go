// Command crane is go-containerregistry's registry client, built from its
// Go module so the OCI front-end's tests pull images with a real,
// independent client (oci/). scripts/crane.sh builds it.
package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/google/go-containerregistry/cmd/crane/cmd"
	"github.com/google/go-containerregistry/pkg/logs"
)

func main() {
	logs.Warn.SetOutput(os.Stderr)
	logs.Progress.SetOutput(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := cmd.New("crane", "crane", nil).ExecuteContext(ctx); err != nil {
		stop()
		os.Exit(1)
	}
}
