package testnix

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVersions: the host and each chroot answer with distinct Nix
// versions, the chroot's Nix is the one on its PATH, and the busybox the
// helper installs is the host's, byte for byte.
func TestVersions(t *testing.T) {
	envs := Versions(t)
	if len(envs) != 1+len(Suites) {
		t.Fatalf("%d environments, want the host and %d chroots", len(envs), len(Suites))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seen := map[string]string{}
	host, err := os.ReadFile(Busybox(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range envs {
		if e.Version == "" || seen[e.Version] != "" {
			t.Fatalf("%s: version %q (seen in %q)", e.Name, e.Version, seen[e.Version])
		}
		seen[e.Version] = e.Name
		if got := lastField(e.Output(t, ctx, "nix-store", "--version")); got != e.Version {
			t.Errorf("%s: nix-store --version %s, nix --version %s", e.Name, got, e.Version)
		}
		bb, err := os.ReadFile(e.HostPath(e.Busybox(t)))
		if err != nil || !bytes.Equal(bb, host) {
			t.Errorf("%s: busybox at %s differs from the host's (%v)", e, e.Busybox(t), err)
		}
		if out := e.Output(t, ctx, e.Busybox(t), "echo", "ok"); strings.TrimSpace(out) != "ok" {
			t.Errorf("%s: busybox echo: %q", e, out)
		}
	}
}

// TestNixPackageOnEveryVersion compiles the nix package's tests
// (CGO_ENABLED=0 go test -c) and runs the binary inside each chroot, so the
// code that parses Nix's output meets real 2.26 and 2.34 output. (On the
// host, `go test ./nix` runs them against 2.8.)
func TestNixPackageOnEveryVersion(t *testing.T) {
	envs := Versions(t)
	bin := GoBuild(t, "nix.test", "test", "-c", "./nix")
	root := ModuleRoot(t)
	for _, e := range envs {
		if e.IsHost() {
			continue
		}
		t.Run(e.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			// The tests read testdata/ and ../examples/ from their package
			// directory, as `go test` runs them.
			src := e.TempDir(t)
			e.CopyTree(t, filepath.Join(root, "nix", "testdata"), src+"/nix/testdata")
			e.CopyTree(t, filepath.Join(root, "examples"), src+"/examples")
			test := e.Install(t, bin, src+"/nix/nix.test", 0o755)
			args := []string{"-test.count=1", "-test.timeout=4m"}
			if testing.Verbose() {
				args = append(args, "-test.v")
			}
			cmd := e.Command(ctx, "sh", append([]string{"-c", `cd "$(dirname "$1")" && exec "$@"`, "sh", test}, args...)...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: the nix package's tests failed under Nix %s: %v\n%s", e, e.Version, err, out)
			}
			t.Logf("%s", out)
		})
	}
}
