// Package testnix is what integration tests need to run real Nix builds
// of the sample derivation (examples/hello.nix).
package testnix

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

// BuildClosure builds examples/closure.nix's top with the host's Nix and
// message (make it unique to get paths nobody built before) and returns
// top and its closure (nix-store -qR).
func BuildClosure(t testing.TB, ctx context.Context, message string) (top string, closure []string) {
	t.Helper()
	busybox := Busybox(t)
	nixFile := filepath.Join(ModuleRoot(t), "examples", "closure.nix")
	cmd := exec.CommandContext(ctx, "nix-build", nixFile, "-A", "top", "--no-out-link",
		"--arg", "busybox", busybox, "--argstr", "message", message)
	cmd.Env = append(os.Environ(), "NIX_CONFIG=substituters =\nbuild-users-group =\nexperimental-features = nix-command")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-build closure.nix: %v", err)
	}
	top = strings.TrimSpace(string(out))
	out, err = exec.CommandContext(ctx, "nix-store", "-qR", top).Output()
	if err != nil {
		t.Fatalf("nix-store -qR %s: %v", top, err)
	}
	return top, strings.Fields(string(out))
}

// PathNamed returns the path of paths whose name ends in suffix, failing
// the test when none does.
func PathNamed(t testing.TB, paths []string, suffix string) string {
	t.Helper()
	for _, p := range paths {
		if strings.HasSuffix(p, suffix) {
			return p
		}
	}
	t.Fatalf("no path ending in %s among %v", suffix, paths)
	return ""
}
