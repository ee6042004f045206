package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testqueue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
)

// TestBuildClosureJSON: `provenix build --json` of examples/closure.nix,
// with Nix's own `--arg NAME EXPR` form, lists every derivation it
// published: the six of the closure, dependencies first, the target last
// and alone marked requested, and the two sources.
func TestBuildClosureJSON(t *testing.T) {
	busybox := requireNix(t)
	ctx := testctx.New(t, 3*time.Minute)
	s, _ := testqueue.Embedded(t, natsserver.Config{})
	key := filepath.Join(t.TempDir(), "builder.key")
	if _, stderr, code := cli(t, ctx, "key", "generate", "--builder", key); code != 0 {
		t.Fatal(stderr)
	}
	wd, _ := os.Getwd()
	stdout, stderr, code := cli(t, ctx, "build", "--json", "--nats-url", s.ClientURL(), "--key", key,
		"--store", t.TempDir(), "--nix-option", "sandbox=false", "--nix-option", "substituters=",
		filepath.Join(wd, "..", "..", "examples", "closure.nix"), "-A", "top",
		"--arg", "busybox", busybox, "--argstr", "message", uniqueMessage(t))
	if code != 0 {
		t.Fatalf("provenix build: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var pubs []jsonPublished
	if err := json.Unmarshal([]byte(stdout), &pubs); err != nil {
		t.Fatalf("build --json output %q: %v", stdout, err)
	}
	if len(pubs) != 6 {
		t.Fatalf("%d derivations listed, want 6:\n%s", len(pubs), stdout)
	}
	var sources int
	for i, p := range pubs {
		last := i == len(pubs)-1
		if p.Requested != last || last != strings.HasSuffix(p.DrvPath, "-closure-top.drv") {
			t.Errorf("%d: %s requested=%v", i, p.DrvPath, p.Requested)
		}
		sources += len(p.Sources)
	}
	if sources != 2 {
		t.Errorf("%d sources listed, want busybox and greeting.txt", sources)
	}
}
