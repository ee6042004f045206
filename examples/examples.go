// Package examples ships the sample derivations inside the binary, so
// `provenix demo` works from `go install` without a checkout.
package examples

import _ "embed"

// HelloNix is examples/hello.nix: attribute "hello", argument "busybox"
// (the resolved path of a static busybox).
//
//go:embed hello.nix
var HelloNix []byte
