// Command timestamp-server is Sigstore's RFC 3161 timestamp authority,
// built from its Go module so integration tests can run a real TSA
// (internal/testtsa). scripts/tsa.sh builds it.
package main

import "github.com/sigstore/timestamp-authority/v2/cmd/timestamp-server/app"

func main() {
	app.Execute()
}
