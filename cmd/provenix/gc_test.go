package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"codeberg.org/provenix/provenix/cache-push/gc"
)

// pathObjects returns the narinfo, sidecar and NAR of a minimal store path
// called name that references refs (store paths), keyed as in a cache, and
// the narinfo's key and the store path.
func pathObjects(name string, refs ...string) (objs map[string][]byte, narinfoKey, storePath string) {
	h := sha256.Sum256([]byte(name))
	hash := nixbase32.EncodeToString(h[:20])
	nar := []byte("nar of " + name)
	sum := sha256.Sum256(nar)
	fh := nixbase32.EncodeToString(sum[:])
	narKey := "nar/" + fh + ".nar.zst"
	storePath = "/nix/store/" + hash + "-" + name
	var bases []string
	for _, r := range refs {
		bases = append(bases, filepath.Base(r))
	}
	ni := "StorePath: " + storePath + "\nURL: " + narKey +
		"\nCompression: zstd\nFileHash: sha256:" + fh + "\nFileSize: 11\nNarHash: sha256:" + fh + "\nNarSize: 11\nReferences: " +
		strings.Join(bases, " ") + "\n"
	objs = map[string][]byte{hash + ".narinfo": []byte(ni), hash + ".provenance.json": []byte("{}"), narKey: nar}
	return objs, hash + ".narinfo", storePath
}

// writeOldPath puts a minimal narinfo, sidecar and NAR for name into dir,
// modified age ago, and returns the narinfo's file name.
func writeOldPath(t *testing.T, dir, name string, age time.Duration) string {
	t.Helper()
	files, key, _ := pathObjects(name)
	mt := time.Now().Add(-age)
	for k, v := range files {
		p := filepath.Join(dir, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, v, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, key)
}

func TestCacheGC(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	old := writeOldPath(t, dir, "old", 40*24*time.Hour)
	fresh := writeOldPath(t, dir, "fresh", time.Hour)

	out, errOut, code := cli(t, ctx, "cache", "gc", "--dir", dir, "--max-age", "30d", "--dry-run", "--json")
	if code != exitOK {
		t.Fatalf("dry run: exit %d: %s", code, errOut)
	}
	var rep gc.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !rep.DryRun || len(rep.Paths) != 1 || !strings.HasSuffix(rep.Paths[0].StorePath, "-old") || rep.BytesFreed == 0 {
		t.Errorf("dry-run report: %s", out)
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatalf("dry run deleted: %v", err)
	}

	out, errOut, code = cli(t, ctx, "cache", "gc", "--dir", dir, "--max-age", "30d")
	if code != exitOK {
		t.Fatalf("gc: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "deleted 1 of 2 paths") {
		t.Errorf("summary: %s", out)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("old narinfo: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh narinfo: %v", err)
	}
}

func TestCacheGCUsage(t *testing.T) {
	ctx := context.Background()
	t.Setenv(s3SecretEnv, "secret") // so the S3 cases fail on what they test
	dir := t.TempDir()
	for _, args := range [][]string{
		{"cache", "gc", "--dir", dir},
		{"cache", "gc", "--dir", dir, "--max-age", "soon"},
		{"cache", "gc", "--dir", filepath.Join(dir, "absent"), "--max-age", "1d"},
		{"cache", "gc", "--staging", "--dir", dir, "--max-age", "1d"},
		{"cache", "gc", "--staging", "--s3-endpoint", "127.0.0.1:1", "--max-age", "1d"},
		{"cache", "gc", "--s3-bucket", "b", "--max-age", "1d"},
		{"cache", "gc", "--dir", dir, "--s3-endpoint", "127.0.0.1:1", "--s3-bucket", "b", "--s3-access-key", "a", "--max-age", "1d"},
		{"cache", "gc", "--staging", "--max-age", "-1h", "--nats-url", "nats://127.0.0.1:1"},
	} {
		if _, errOut, code := cli(t, ctx, args...); code != exitUsageErr {
			t.Errorf("%v: exit %d, want %d: %s", args, code, exitUsageErr, errOut)
		}
	}
}
