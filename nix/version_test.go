package nix

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testnix"
)

// TestVersionCachesSuccessOnly: a caller cancelled while the version is
// asked gets the error, and the next caller asks again and gets it; only
// then is it cached.
func TestVersionCachesSuccessOnly(t *testing.T) {
	testnix.Busybox(t) // Nix must be installed
	bin, err := exec.LookPath("nix")
	if err != nil {
		t.Fatal(err)
	}
	if bin, err = filepath.EvalSymlinks(bin); err != nil {
		t.Fatal(err)
	}
	versions.Delete(bin) // forget what earlier tests learnt
	n := &Nix{}
	cut, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Version(cut); !errors.Is(err, context.Canceled) {
		t.Fatalf("Version with a cancelled ctx: %v", err)
	}
	if _, ok := versions.Load(bin); ok {
		t.Fatal("a failure was cached")
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	v, err := n.Version(ctx)
	if err != nil || v.Major != 2 {
		t.Fatalf("Version = %v, %v", v, err)
	}
	if got, ok := versions.Load(bin); !ok || got.(Version) != v {
		t.Fatal("a success was not cached")
	}
	// Cached: even a cancelled caller gets it now, without running nix.
	if v2, err := n.Version(cut); err != nil || v2 != v {
		t.Fatalf("cached Version = %v, %v", v2, err)
	}
}
