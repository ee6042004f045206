package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cachelayout"
	"codeberg.org/provenix/provenix/internal/testctx"
)

// `provenix oci tag` keeps the tag in the cache, refuses unpublished
// paths and bad names as usage or plain errors, and --delete removes it.
func TestOCITagCommand(t *testing.T) {
	ctx := testctx.New(t, time.Minute)
	dir := t.TempDir()
	objs, _, sp := pathObjects("oci-tagged")
	for k, v := range objs {
		p := filepath.Join(dir, filepath.FromSlash(k))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, v, 0o644)
	}
	out, errOut, code := cli(t, ctx, "oci", "tag", "--dir", dir, "demo/app:v1", sp, "--entrypoint", sp+"/bin/app", "--entrypoint", "serve")
	if code != 0 {
		t.Fatalf("oci tag: %d %s %s", code, out, errOut)
	}
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(cachelayout.OCITagKey("demo/app", "v1"))))
	if err != nil || !strings.Contains(string(b), sp) || !strings.Contains(string(b), `"serve"`) {
		t.Fatalf("tag record: %v %s", err, b)
	}
	if _, errOut, code := cli(t, ctx, "oci", "tag", "--dir", dir, "Demo:v1", sp); code != 2 {
		t.Fatalf("bad name: exit %d %s, want a usage error", code, errOut)
	}
	if _, errOut, code := cli(t, ctx, "oci", "tag", "--dir", dir, "demo/app:v2", "/nix/store/00000000000000000000000000000000-unpublished"); code == 0 || !strings.Contains(errOut, "not published") {
		t.Fatalf("unpublished path: exit %d %s", code, errOut)
	}
	if _, errOut, code := cli(t, ctx, "oci", "tag", "--dir", dir, "--delete", "demo/app:v1"); code != 0 {
		t.Fatalf("delete: %d %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(cachelayout.OCITagKey("demo/app", "v1")))); !os.IsNotExist(err) {
		t.Fatalf("tag still there: %v", err)
	}
}
