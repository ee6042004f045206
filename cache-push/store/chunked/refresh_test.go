package chunked

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store/local"
)

// TestReuseRefreshesOldChunks: a writer that finds its chunk stored
// leaves a young one alone and rewrites one older than RefreshAge, so that
// gc (whose grace is longer) does not take it before the writer's chunk
// list names it.
func TestReuseRefreshesOldChunks(t *testing.T) {
	dir := t.TempDir()
	inner, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(inner, Options{RefreshAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("a chunk")
	file := filepath.Join(dir, filepath.FromSlash(chunkKey(sha256.Sum256(data))))
	if err := s.putChunk(t.Context(), data); err != nil {
		t.Fatal(err)
	}
	young := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	os.Chtimes(file, young, young)
	if err := s.putChunk(t.Context(), data); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(file); !fi.ModTime().Equal(young) {
		t.Errorf("a chunk younger than RefreshAge was rewritten (mtime %v)", fi.ModTime())
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(file, old, old)
	if err := s.putChunk(t.Context(), data); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(file); time.Since(fi.ModTime()) > time.Minute {
		t.Errorf("a chunk older than RefreshAge was reused as it was (mtime %v)", fi.ModTime())
	}
	// A chunk of the wrong length under the hash (damaged) is rewritten.
	os.WriteFile(file, []byte("x"), 0o644)
	if err := s.putChunk(t.Context(), data); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(file); string(b) != string(data) {
		t.Errorf("a damaged chunk was kept: %q", b)
	}
}
