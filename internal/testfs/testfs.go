// Package testfs gives tests directories with what a test needs of the
// filesystem: one another user can reach (OpenDir), or a small filesystem
// of their own, to see what code does when a disk fills up (Tmpfs, Linux).
package testfs

import (
	"os"
	"path/filepath"
	"testing"
)

// OpenDir is a temporary directory, removed when the test ends, that
// another user (a runner's job user) can reach: it and each directory
// above it up to the system's temporary directory are made 0755.
func OpenDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Read is the contents of the file at path, or fails the test.
func Read(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
