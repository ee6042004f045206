package nix

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testnix"
)

// TestRealiseCPU: the CPU time a local build burns is reported.
func TestRealiseCPU(t *testing.T) {
	bb := testnix.Busybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	expr := `{ busybox, tag }:
let bb = builtins.path { name = "busybox"; path = builtins.dirOf busybox; filter = p: t: baseNameOf p == baseNameOf busybox; };
in derivation { name = "cpu-burn"; inherit tag; system = builtins.currentSystem; builder = "${bb}/${baseNameOf busybox}";
  args = [ "sh" "-c" "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $i > $out" ]; }`
	if err := os.WriteFile(filepath.Join(dir, "burn.nix"), []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := OfflineOptions()
	opts["sandbox"] = "false"
	n := &Nix{Root: t.TempDir(), Options: opts}
	drvs, err := n.Instantiate(ctx, filepath.Join(dir, "burn.nix"), "", map[string]string{"busybox": bb}, map[string]string{"tag": t.Name() + time.Now().String()})
	if err != nil {
		t.Fatal(err)
	}
	var cpu time.Duration
	start := time.Now()
	if _, err := n.RealiseWith(ctx, RealiseOptions{NoSubstitute: true, CPU: &cpu}, drvs...); err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	t.Logf("build: %s CPU in %s", cpu, wall)
	// The busy loop is most of it; nix-store alone takes a few ms.
	if cpu < 100*time.Millisecond {
		t.Errorf("CPU %s: the build's own time is not counted", cpu)
	}
}
