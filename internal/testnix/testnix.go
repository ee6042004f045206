// Package testnix is what integration tests need to run real Nix builds
// of the sample derivation (examples/hello.nix).
package testnix

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// Busybox fails the test — never skips — unless Nix and a static busybox
// are installed, and returns busybox's resolved path: the sample's
// `--arg busybox` must be the file itself, not a symlink to it.
func Busybox(t testing.TB) string {
	t.Helper()
	// The commands nix.Available looks for, looked up here because the
	// nix package's own tests use this helper, so it cannot import nix.
	for _, c := range []string{"nix-build", "nix-store", "nix-instantiate", "nix"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("Nix is required (%s not found)", c)
		}
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox is required (apt-get install busybox-static)")
	}
	bb, err = filepath.EvalSymlinks(bb)
	if err != nil {
		t.Fatal(err)
	}
	return bb
}
