// Command fulcio is Sigstore's Fulcio certificate authority, built from its
// Go module so integration tests can run a real Fulcio (internal/testfulcio).
// scripts/fulcio.sh builds it.
package main

import (
	"context"

	"github.com/sigstore/fulcio/cmd/app"
)

func main() {
	app.Execute(context.Background())
}
