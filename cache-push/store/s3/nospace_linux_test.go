//go:build linux

package s3

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/tests3"
)

// TestNoSpace: an S3 server whose disk is full answers 507; the store
// reports store.ErrNoSpace, leaves no object or upload behind, and the
// same write succeeds once space is freed.
func TestNoSpace(t *testing.T) {
	disk := testfs.Tmpfs(t, 4<<20, 0)
	srv := tests3.StartIn(t, filepath.Join(disk, "data"))
	s := newStore(t, srv, "", 0)
	ctx := t.Context()
	const key = "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst"
	requireNothing := func() {
		t.Helper()
		if _, err := s.Stat(ctx, key); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("after the failed write, Stat = %v", err)
		}
		if objs, ups := bucketContents(t, s); len(objs) != 0 || len(ups) != 0 {
			t.Fatalf("after the failed write the bucket holds %v, uploads %v", objs, ups)
		}
	}

	big := make([]byte, 8<<20)
	rand.Read(big)
	err := store.Put(ctx, s, key, bytes.NewReader(big))
	if !errors.Is(err, store.ErrNoSpace) || !strings.Contains(err.Error(), srv.Bucket) {
		t.Fatalf("Put larger than the server's disk: %v; want store.ErrNoSpace naming the bucket", err)
	}
	t.Log(err)
	requireNothing()

	filler := testfs.Fill(t, disk, "filler")
	if err := store.Put(ctx, s, key, bytes.NewReader(big[:256<<10])); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Put on a full disk: %v; want store.ErrNoSpace", err)
	}
	requireNothing()
	// A part refused while the object is still being written: the Write
	// fails, with the same error.
	parts := newStore(t, srv, "", minPartSize)
	if err := store.Put(ctx, parts, key, bytes.NewReader(big)); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("Put of parts on a full disk: %v; want store.ErrNoSpace", err)
	}
	requireNothing()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, s, key, bytes.NewReader(big[:256<<10])); err != nil {
		t.Fatalf("Put after space was freed: %v", err)
	}
	got, err := store.ReadAll(ctx, s, key, 1<<20)
	if err != nil || !bytes.Equal(got, big[:256<<10]) {
		t.Fatalf("object after the retry: %d bytes, %v", len(got), err)
	}
}
