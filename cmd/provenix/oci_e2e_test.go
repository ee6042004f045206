package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testproc"
	"codeberg.org/provenix/provenix/up"
	"codeberg.org/provenix/provenix/vsa"
)

// TestOCIEndToEnd: a closure built with `provenix build` and published by
// the stack's pusher (with its summaries) is an image on the stack's
// registry: crane sees one layer per path, and cosign verifies the image's
// summary, which the stack signed with the pusher's VSA key, through the
// referrers API. `provenix cache serve --vsa-key` of the same cache signs
// it again once the stored one is gone.
func TestOCIEndToEnd(t *testing.T) {
	busybox := requireNix(t)
	cosign := testproc.Cosign(t)
	crane := testproc.Crane(t)
	ctx := testctx.New(t, 5*time.Minute)
	dir := t.TempDir()
	stack := startStack(t, up.Config{DataDir: dir})
	wd, _ := os.Getwd()
	stdout, stderr, code := cli(t, ctx, "build", "--json", filepath.Join(wd, "..", "..", "examples", "closure.nix"), "-A", "top",
		"--arg", "busybox", busybox, "--argstr", "message="+uniqueMessage(t), "--nix-option", "substituters=", "--data-dir", dir)
	if code != 0 {
		t.Fatalf("provenix build: exit %d\n%s\n%s", code, stdout, stderr)
	}
	var pubs []jsonPublished
	if err := json.Unmarshal([]byte(stdout), &pubs); err != nil || len(pubs) == 0 {
		t.Fatalf("build --json: %v %s", err, stdout)
	}
	top := pubs[len(pubs)-1].Outputs[0].Path
	waitNarinfo(t, stack.CacheURL(), top)
	closure, err := exec.CommandContext(ctx, "nix-store", "-qR", top).Output()
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(stack.CacheURL(), "http://") + "/nix/" + filepath.Base(top)

	m, err := exec.CommandContext(ctx, crane, "manifest", "--insecure", ref).CombinedOutput()
	if err != nil {
		t.Fatalf("crane manifest: %v %s", err, m)
	}
	var man struct{ Layers []json.RawMessage }
	if err := json.Unmarshal(m, &man); err != nil || len(man.Layers) != len(strings.Fields(string(closure))) {
		t.Fatalf("%d layers for a closure of %d: %v", len(man.Layers), len(strings.Fields(string(closure))), err)
	}
	verify := func(ref string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, cosign, "verify-attestation", "--key", stack.Paths().VSAPub(), "--type", vsa.PredicateType,
			"--allow-http-registry", "--insecure-ignore-tlog", ref)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DOCKER_CONFIG="+t.TempDir())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("cosign refused the image's summary: %v\n%s", err, out)
		}
	}
	verify(ref)

	summaries := filepath.Join(stack.Paths().Cache(), filepath.FromSlash(cachelayout.OCIVSAPrefix))
	if err := os.RemoveAll(summaries); err != nil {
		t.Fatal(err)
	}
	serveURL := serveCache(t, ctx, "--dir", stack.Paths().Cache(), "--vsa-key", stack.Paths().VSAKey())
	verify(strings.TrimPrefix(serveURL, "http://") + "/nix/" + filepath.Base(top))
	if entries, err := os.ReadDir(summaries); err != nil || len(entries) != 1 {
		t.Fatalf("cache serve stored %d image summaries: %v", len(entries), err)
	}
}
