//go:build linux

package local

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/internal/testfs"
)

const noSpaceKey = "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst"

// requireNoSpace checks err is the clear, matchable out-of-space error.
func requireNoSpace(t *testing.T, s *Store, err error) {
	t.Helper()
	if !errors.Is(err, store.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write on a full disk: %v; want store.ErrNoSpace wrapping ENOSPC", err)
	}
	if msg := err.Error(); !strings.Contains(msg, s.Dir()) || !strings.Contains(msg, "free") {
		t.Fatalf("out-of-space error %q names neither the store directory nor the space left", msg)
	}
}

// requireNothingVisible checks that no object and no temporary file is
// left: a failed write leaves nothing behind, not even space taken.
func requireNothingVisible(t *testing.T, s *Store) {
	t.Helper()
	if _, err := s.Stat(t.Context(), noSpaceKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after a failed write, Stat = %v; want ErrNotFound", err)
	}
	err := s.List(t.Context(), "", func(i store.Info) error {
		t.Errorf("after a failed write, %s is listed", i.Key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(filepath.Join(s.Dir(), tmpDir)); err != nil || len(entries) != 0 {
		t.Fatalf("after a failed write, .tmp holds %v (%v)", entries, err)
	}
}

// TestNoSpace: on a full disk a write fails with store.ErrNoSpace, names
// the directory and the space left, and leaves nothing visible nor any
// temporary file; once space is freed the same write succeeds.
func TestNoSpace(t *testing.T) {
	dir := testfs.Tmpfs(t, 1<<20, 0)
	s, err := New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	free := testfs.Free(t, dir)

	// An object larger than the whole disk: fails in Write.
	big := make([]byte, 2<<20)
	rand.Read(big)
	requireNoSpace(t, s, store.Put(ctx, s, noSpaceKey, bytes.NewReader(big)))
	requireNothingVisible(t, s)
	if got := testfs.Free(t, dir); got < free {
		t.Fatalf("the failed write still holds %d bytes", free-got)
	}

	// A small object on a disk someone else filled: the Pending's Write
	// fails, and so does its Commit, with the same error.
	filler := testfs.Fill(t, dir, "filler")
	p, err := s.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, werr := p.Write(big[:64<<10])
	requireNoSpace(t, s, werr)
	requireNoSpace(t, s, p.Commit(ctx, noSpaceKey))
	requireNothingVisible(t, s)

	// Space freed: the retry lands whole.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	half := big[:free/2]
	if err := store.Put(ctx, s, noSpaceKey, bytes.NewReader(half)); err != nil {
		t.Fatalf("write after space was freed: %v", err)
	}
	got, err := store.ReadAll(ctx, s, noSpaceKey, 2<<20)
	if err != nil || !bytes.Equal(got, half) {
		t.Fatalf("object after the retry: %d bytes, %v; want the %d written", len(got), err, len(half))
	}
}

// TestNoInodes: a disk out of inodes (blocks free) is out of space too,
// whether creating the temporary file or the key's directory at Commit.
func TestNoInodes(t *testing.T) {
	dir := testfs.Tmpfs(t, 1<<20, 4) // the root, cache/, cache/.tmp and one more
	s, err := New(filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	// The temporary file takes the last inode; nar/ finds none at Commit.
	requireNoSpace(t, s, store.Put(ctx, s, noSpaceKey, strings.NewReader("nar")))
	requireNothingVisible(t, s)
	// A key in the root needs no directory: it lands.
	if err := store.Put(ctx, s, "nix-cache-info", strings.NewReader("StoreDir: /nix/store\n")); err != nil {
		t.Fatal(err)
	}
	// Now even the temporary file finds no inode.
	_, err = s.Create(ctx)
	requireNoSpace(t, s, err)
}
