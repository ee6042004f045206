package local

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/storetest"
)

func newTestStore(t *testing.T, opts ...Option) *Store {
	t.Helper()
	s, err := New(filepath.Join(t.TempDir(), "cache"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return newTestStore(t) })
}

func TestLayoutAndModes(t *testing.T) {
	s := newTestStore(t)
	key := "nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst"
	if err := store.Put(t.Context(), s, key, strings.NewReader("nar")); err != nil {
		t.Fatal(err)
	}
	// Plain files named by key, so any static web server can serve the dir.
	fi, err := os.Stat(filepath.Join(s.Dir(), "nar", "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst"))
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got&0o044 != 0o044 || got&0o022 != 0 {
		t.Errorf("file mode %v, want readable by all, written by owner only (0644 under a usual umask)", got)
	}
	di, err := os.Stat(filepath.Join(s.Dir(), "nar"))
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got&0o055 != 0o055 {
		t.Errorf("directory mode %v, want 0755 under a usual umask", got)
	}
	entries, err := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if err != nil || len(entries) != 0 {
		t.Errorf(".tmp holds %v, %v after Put; want it empty", entries, err)
	}
}

func TestNewRemovesStaleTempFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A writer that crashed long ago, one still writing, and a file that
	// is not ours.
	stale, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	staleName := stale.(*pending).f.Name()
	stale.(*pending).f.Close()
	old := time.Now().Add(-2 * StaleAfter)
	if err := os.Chtimes(staleName, old, old); err != nil {
		t.Fatal(err)
	}
	live, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer live.Abort()
	foreign := filepath.Join(dir, tmpDir, "not-ours")
	if err := os.WriteFile(foreign, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(foreign, old, old); err != nil {
		t.Fatal(err)
	}

	if _, err := New(dir); err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, _ := os.ReadDir(filepath.Join(dir, tmpDir))
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{filepath.Base(live.(*pending).f.Name()), "not-ours"}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Errorf(".tmp holds %q after New, want %q", left, want)
	}
	// The live writer is unaffected.
	live.Write([]byte("ok"))
	if err := live.Commit(t.Context(), "k"); err != nil {
		t.Errorf("Commit of a live writer after New: %v", err)
	}
}

func TestStrayFilesAreNotListed(t *testing.T) {
	s := newTestStore(t)
	if err := store.Put(t.Context(), s, "good", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bad name", ".hidden"} {
		if err := os.WriteFile(filepath.Join(s.Dir(), name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(s.Dir(), "link")); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := s.List(t.Context(), "", func(fi store.Info) error {
		got = append(got, fi.Key)
		return nil
	})
	if err != nil || !slices.Equal(got, []string{"good"}) {
		t.Errorf("List = %q, %v; want [good]", got, err)
	}
}

func TestCommitOverDirectoryFails(t *testing.T) {
	s := newTestStore(t)
	if err := store.Put(t.Context(), s, "a/b", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	// "a" is a directory here, so it cannot also be an object; the failed
	// Commit must leave nothing behind.
	if err := store.Put(t.Context(), s, "a", strings.NewReader("y")); err == nil {
		t.Error("Put over a directory succeeded")
	}
	if err := store.Put(t.Context(), s, "a/b/c", strings.NewReader("y")); err == nil {
		t.Error("Put below a file succeeded")
	}
	entries, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if len(entries) != 0 {
		t.Errorf(".tmp holds %d files after failed commits", len(entries))
	}
}

// TestDirectoryRemoved: the store remembers the directories it made, and
// makes one again that was removed behind its back (by hand, or by a
// tool that prunes empty directories), for commits alone and in groups.
func TestDirectoryRemoved(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  []Option
	}{{"group commit", nil}, {"without group commit", []Option{WithoutGroupCommit()}}, {"filesystem flush", []Option{WithFilesystemFlush()}}} {
		for _, group := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/group=%v", tc.name, group), func(t *testing.T) {
				s := newTestStore(t, tc.opt...)
				ctx := t.Context()
				for i, key := range []string{"nar/a.nar.zst", "nar/b.nar.zst", "nar/c.nar.zst"} {
					if i > 0 {
						if err := os.RemoveAll(filepath.Join(s.Dir(), "nar")); err != nil {
							t.Fatal(err)
						}
					}
					o, err := store.Write(ctx, s, key, strings.NewReader(key))
					if err != nil {
						t.Fatal(err)
					}
					if group {
						err = s.CommitGroup(ctx, []store.Object{o})
					} else {
						err = o.Pending.Commit(ctx, key)
					}
					if err != nil {
						t.Fatalf("commit %s after nar/ was removed: %v", key, err)
					}
					if b, err := store.ReadAll(ctx, s, key, 100); err != nil || string(b) != key {
						t.Fatalf("%s reads %q, %v", key, b, err)
					}
				}
			})
		}
	}
}
