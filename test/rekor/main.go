// Command rekor-server is rekor-tiles' POSIX (file storage) Rekor v2 server,
// built from its Go module so integration tests can run a real
// transparency log (internal/testrekor). scripts/rekor.sh builds it.
package main

import "github.com/sigstore/rekor-tiles/v2/cmd/rekor-server/posix/app"

func main() {
	app.Execute()
}
