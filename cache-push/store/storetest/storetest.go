// Package storetest is the conformance suite that every store.Store
// implementation must pass; it checks the contract written in the store
// package documentation.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// LargeSize is the size of the object streamed by the "Large" test.
const LargeSize = 32 << 20

// Run runs the conformance suite. newStore must return an empty store that
// the test may use exclusively; it is called once per subtest.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"EmptyObject", testEmptyObject},
		{"Replace", testReplace},
		{"ReplaceWhileReading", testReplaceWhileReading},
		{"NotFound", testNotFound},
		{"InvalidKeys", testInvalidKeys},
		{"PendingInvisible", testPendingInvisible},
		{"Abort", testAbort},
		{"AbortAfterCommit", testAbortAfterCommit},
		{"CommitTwice", testCommitTwice},
		{"CommitCancelled", testCommitCancelled},
		{"PutCancelled", testPutCancelled},
		{"ConcurrentWriters", testConcurrentWriters},
		{"List", testList},
		{"ListStops", testListStops},
		{"Delete", testDelete},
		{"ReadAllLimit", testReadAllLimit},
		{"Large", testLarge},
		{"OpenInfo", testOpenInfo},
		{"CommitGroup", testCommitGroup},
		{"CommitGroupStops", testCommitGroupStops},
		{"CommitGroupCancelled", testCommitGroupCancelled},
		{"CommitGroupConcurrent", testCommitGroupConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, newStore(t))
		})
	}
}

func put(t *testing.T, s store.Store, key string, data []byte) {
	t.Helper()
	if err := store.Put(t.Context(), s, key, bytes.NewReader(data)); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

func get(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	b, err := store.ReadAll(t.Context(), s, key, 64<<20)
	if err != nil {
		t.Fatalf("ReadAll(%q): %v", key, err)
	}
	return b
}

func wantAbsent(t *testing.T, s store.Store, key string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	if rc, err := s.Open(t.Context(), key); !errors.Is(err, store.ErrNotFound) {
		if err == nil {
			rc.Close()
		}
		t.Errorf("Open(%q) = %v, want ErrNotFound", key, err)
	}
}

func keys(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	var ks []string
	err := s.List(t.Context(), prefix, func(fi store.Info) error {
		ks = append(ks, fi.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	slices.Sort(ks)
	return ks
}

func testRoundTrip(t *testing.T, s store.Store) {
	for _, key := range []string{
		"nix-cache-info",
		"0123456789abcdfghijklmnpqrsvwxyz.narinfo",
		"0123456789abcdfghijklmnpqrsvwxyz.provenance.json",
		"nar/1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s.nar.zst",
		"log/abc-hello_2.12+x-1.drv",
		"a/b/c/d/e",
		"UPPER.lower",
	} {
		data := []byte("content of " + key + "\n")
		put(t, s, key, data)
		if got := get(t, s, key); !bytes.Equal(got, data) {
			t.Errorf("%s: read %q, want %q", key, got, data)
		}
		fi, err := s.Stat(t.Context(), key)
		if err != nil {
			t.Fatalf("Stat(%q): %v", key, err)
		}
		if fi.Key != key || fi.Size != int64(len(data)) || fi.ModTime.IsZero() {
			t.Errorf("Stat(%q) = %+v, want key %q, size %d, a mod time", key, fi, key, len(data))
		}
	}
}

func testEmptyObject(t *testing.T, s store.Store) {
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	if err := p.Commit(t.Context(), "empty"); err != nil {
		t.Fatal(err)
	}
	if fi, err := s.Stat(t.Context(), "empty"); err != nil || fi.Size != 0 {
		t.Errorf("Stat = %+v, %v; want size 0", fi, err)
	}
	if got := get(t, s, "empty"); len(got) != 0 {
		t.Errorf("read %q, want nothing", got)
	}
}

func testReplace(t *testing.T, s store.Store) {
	put(t, s, "x.narinfo", []byte("a much longer first version\n"))
	put(t, s, "x.narinfo", []byte("second\n"))
	if got := get(t, s, "x.narinfo"); string(got) != "second\n" {
		t.Errorf("read %q after replace, want %q", got, "second\n")
	}
	if fi, err := s.Stat(t.Context(), "x.narinfo"); err != nil || fi.Size != 7 {
		t.Errorf("Stat = %+v, %v; want size 7", fi, err)
	}
	if ks := keys(t, s, ""); !slices.Equal(ks, []string{"x.narinfo"}) {
		t.Errorf("List = %q after replace, want one key", ks)
	}
}

func testReplaceWhileReading(t *testing.T, s store.Store) {
	old := bytes.Repeat([]byte("old "), 64<<10)
	put(t, s, "obj", old)
	rc, err := s.Open(t.Context(), "obj")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	first := make([]byte, 10)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatal(err)
	}
	put(t, s, "obj", []byte("new"))
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(first, rest...); !bytes.Equal(got, old) {
		t.Errorf("reader opened before replace read %d bytes, want the old %d", len(got), len(old))
	}
	if got := get(t, s, "obj"); string(got) != "new" {
		t.Errorf("new reader read %q, want %q", got, "new")
	}
}

// testOpenInfo checks store.OpenInfo, the stores' one-step InfoOpener
// where they have one: it describes the very object it opened, a replace
// after opening changes neither, and absent or invalid keys fail as Open
// does.
func testOpenInfo(t *testing.T, s store.Store) {
	ctx := t.Context()
	old := bytes.Repeat([]byte("old "), 16<<10)
	put(t, s, "obj", old)
	rc, fi, err := store.OpenInfo(ctx, s, "obj")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	put(t, s, "obj", []byte("new"))
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Key != "obj" || fi.Size != int64(len(old)) || fi.ModTime.IsZero() || !bytes.Equal(got, old) {
		t.Errorf("OpenInfo = %+v with %d bytes, want key obj, size %d, a mod time and the old content", fi, len(got), len(old))
	}
	put(t, s, "nar/x", []byte("x")) // "nar" is then a prefix, not an object
	for _, key := range []string{"missing", "nar"} {
		if rc, _, err := store.OpenInfo(ctx, s, key); !errors.Is(err, store.ErrNotFound) {
			if err == nil {
				rc.Close()
			}
			t.Errorf("OpenInfo(%q) = %v, want ErrNotFound", key, err)
		}
	}
	if _, _, err := store.OpenInfo(ctx, s, "../escape"); !errors.Is(err, store.ErrInvalidKey) {
		t.Errorf("OpenInfo(../escape) = %v, want ErrInvalidKey", err)
	}
}

func testNotFound(t *testing.T, s store.Store) {
	put(t, s, "dir/obj", []byte("x"))
	for _, key := range []string{"missing", "dir/missing", "dir", "dir/obj/below", "other/dir/obj"} {
		wantAbsent(t, s, key)
	}
}

// InvalidKeys lists keys every store must reject with store.ErrInvalidKey.
var InvalidKeys = []string{
	"", "/", "/abs", "trailing/", "a//b", ".", "..", "../escape", "a/../b",
	"a/./b", "./a", ".tmp/x", ".hidden", "sp ace", "back\\slash", "nul\x00",
	"per%cent", "q?uery", "col:on", "ü", strings.Repeat("a", store.MaxKeyLen+1),
	strings.Repeat("a", 256) + "/x",
}

func testInvalidKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, key := range InvalidKeys {
		check := func(op string, err error) {
			t.Helper()
			if !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("%s(%q) = %v, want ErrInvalidKey", op, key, err)
			}
		}
		_, err := s.Open(ctx, key)
		check("Open", err)
		_, err = s.Stat(ctx, key)
		check("Stat", err)
		check("Delete", s.Delete(ctx, key))
		check("Put", store.Put(ctx, s, key, strings.NewReader("x")))
		p, err := s.Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.Write([]byte("x"))
		check("Commit", p.Commit(ctx, key))
		p.Abort()
	}
	for _, prefix := range []string{"/", "a//", "../", ".tmp/", "a b"} {
		err := s.List(ctx, prefix, func(store.Info) error { return nil })
		if !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("List(%q) = %v, want ErrInvalidKey", prefix, err)
		}
	}
	if ks := keys(t, s, ""); len(ks) != 0 {
		t.Errorf("List = %q after rejected writes, want nothing", ks)
	}
}

func testPendingInvisible(t *testing.T, s store.Store) {
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	if _, err := p.Write([]byte("not yet")); err != nil {
		t.Fatal(err)
	}
	if ks := keys(t, s, ""); len(ks) != 0 {
		t.Errorf("List = %q with only a pending object, want nothing", ks)
	}
	if err := p.Commit(t.Context(), "now"); err != nil {
		t.Fatal(err)
	}
	if ks := keys(t, s, ""); !slices.Equal(ks, []string{"now"}) {
		t.Errorf("List = %q after Commit, want [now]", ks)
	}
}

func testAbort(t *testing.T, s store.Store) {
	ctx := t.Context()
	p, err := s.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("discard me")); err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := p.Abort(); err != nil {
		t.Errorf("second Abort: %v, want nil", err)
	}
	if err := p.Commit(ctx, "k"); !errors.Is(err, store.ErrFinished) {
		t.Errorf("Commit after Abort = %v, want ErrFinished", err)
	}
	if _, err := p.Write([]byte("more")); !errors.Is(err, store.ErrFinished) {
		t.Errorf("Write after Abort = %v, want ErrFinished", err)
	}
	wantAbsent(t, s, "k")
	if ks := keys(t, s, ""); len(ks) != 0 {
		t.Errorf("List = %q after Abort, want nothing", ks)
	}
}

func testAbortAfterCommit(t *testing.T, s store.Store) {
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("kept"))
	if err := p.Commit(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v, want nil", err)
	}
	if got := get(t, s, "k"); string(got) != "kept" {
		t.Errorf("read %q after Abort following Commit, want %q", got, "kept")
	}
}

func testCommitTwice(t *testing.T, s store.Store) {
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	p.Write([]byte("once"))
	if err := p.Commit(t.Context(), "k1"); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(t.Context(), "k2"); !errors.Is(err, store.ErrFinished) {
		t.Errorf("second Commit = %v, want ErrFinished", err)
	}
	if _, err := p.Write([]byte("x")); !errors.Is(err, store.ErrFinished) {
		t.Errorf("Write after Commit = %v, want ErrFinished", err)
	}
	wantAbsent(t, s, "k2")
}

func testCommitCancelled(t *testing.T, s store.Store) {
	p, err := s.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	p.Write([]byte("never"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := p.Commit(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit with cancelled ctx = %v, want context.Canceled", err)
	}
	wantAbsent(t, s, "k")
}

// endless yields bytes forever, so only a working cancellation ends the Put.
type endless struct {
	cancel func()
	n      int
}

func (e *endless) Read(p []byte) (int, error) {
	if e.n += len(p); e.n > 1<<20 {
		e.cancel()
	}
	return len(p), nil
}

func testPutCancelled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	err := store.Put(ctx, s, "k", &endless{cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Put with cancelled ctx = %v, want context.Canceled", err)
	}
	wantAbsent(t, s, "k")
}

func testConcurrentWriters(t *testing.T, s store.Store) {
	const writers, size, chunk = 8, 256 << 10, 4 << 10
	values := make([][]byte, writers)
	for i := range values {
		values[i] = bytes.Repeat([]byte{byte('A' + i)}, size)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			p, err := s.Create(t.Context())
			if err != nil {
				errs <- err
				return
			}
			defer p.Abort()
			// Small writes interleave the writers as much as possible.
			for off := 0; off < size; off += chunk {
				if _, err := p.Write(values[i][off : off+chunk]); err != nil {
					errs <- err
					return
				}
			}
			errs <- p.Commit(t.Context(), "nar/same.nar.zst")
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	got := get(t, s, "nar/same.nar.zst")
	if !slices.ContainsFunc(values, func(v []byte) bool { return bytes.Equal(v, got) }) {
		t.Errorf("after concurrent commits read %d bytes that match no single writer", len(got))
	}
	if ks := keys(t, s, ""); !slices.Equal(ks, []string{"nar/same.nar.zst"}) {
		t.Errorf("List = %q, want exactly one object", ks)
	}
}

func testList(t *testing.T, s store.Store) {
	all := []string{"a/1", "a/2", "ab", "a-c", "b/1", "nar/x.nar.zst", "nar/y.nar.zst", "nix-cache-info"}
	for i, k := range all {
		put(t, s, k, bytes.Repeat([]byte("x"), i))
	}
	slices.Sort(all)
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", all},
		{"a", []string{"a-c", "a/1", "a/2", "ab"}},
		{"a/", []string{"a/1", "a/2"}},
		{"a/1", []string{"a/1"}},
		{"nar/", []string{"nar/x.nar.zst", "nar/y.nar.zst"}},
		{"nar/x", []string{"nar/x.nar.zst"}},
		{"n", []string{"nar/x.nar.zst", "nar/y.nar.zst", "nix-cache-info"}},
		{"zzz", nil},
		{"zzz/", nil},
		{"a/1/", nil},
	}
	for _, tt := range tests {
		if got := keys(t, s, tt.prefix); !slices.Equal(got, tt.want) {
			t.Errorf("List(%q) = %q, want %q", tt.prefix, got, tt.want)
		}
	}
	// Sizes reported by List agree with Stat.
	err := s.List(t.Context(), "", func(fi store.Info) error {
		st, err := s.Stat(t.Context(), fi.Key)
		if err != nil {
			return err
		}
		if st.Size != fi.Size {
			return fmt.Errorf("%s: List size %d, Stat size %d", fi.Key, fi.Size, st.Size)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func testListStops(t *testing.T, s store.Store) {
	for i := range 5 {
		put(t, s, fmt.Sprintf("k%d", i), []byte("x"))
	}
	stop := errors.New("stop here")
	calls := 0
	err := s.List(t.Context(), "", func(store.Info) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List returned %v after %d calls, want fn's error after 1", err, calls)
	}
}

func testDelete(t *testing.T, s store.Store) {
	ctx := t.Context()
	put(t, s, "dir/a", []byte("a"))
	put(t, s, "dir/b", []byte("b"))
	if err := s.Delete(ctx, "dir/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantAbsent(t, s, "dir/a")
	if err := s.Delete(ctx, "dir/a"); err != nil {
		t.Errorf("second Delete = %v, want nil", err)
	}
	for _, key := range []string{"never-existed", "dir/a/below", "dir"} {
		if err := s.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%q) = %v, want nil", key, err)
		}
	}
	if got := get(t, s, "dir/b"); string(got) != "b" {
		t.Errorf("sibling reads %q after Delete, want %q", got, "b")
	}
	if ks := keys(t, s, ""); !slices.Equal(ks, []string{"dir/b"}) {
		t.Errorf("List = %q after Delete, want [dir/b]", ks)
	}
}

func testReadAllLimit(t *testing.T, s store.Store) {
	put(t, s, "k", []byte("12345"))
	if b, err := store.ReadAll(t.Context(), s, "k", 5); err != nil || string(b) != "12345" {
		t.Errorf("ReadAll(limit 5) = %q, %v", b, err)
	}
	if _, err := store.ReadAll(t.Context(), s, "k", 4); !errors.Is(err, store.ErrTooLarge) {
		t.Errorf("ReadAll(limit 4) = %v, want ErrTooLarge", err)
	}
	if _, err := store.ReadAll(t.Context(), s, "missing", 4); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ReadAll(missing) = %v, want ErrNotFound", err)
	}
}

// pseudoRandom is a deterministic, incompressible stream that is never held
// in memory as a whole.
func pseudoRandom(n int64) io.Reader {
	var seed [32]byte
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

func testLarge(t *testing.T, s store.Store) {
	want := sha256.New()
	if err := store.Put(t.Context(), s, "nar/large.nar.zst", io.TeeReader(pseudoRandom(LargeSize), want)); err != nil {
		t.Fatal(err)
	}
	fi, err := s.Stat(t.Context(), "nar/large.nar.zst")
	if err != nil || fi.Size != LargeSize {
		t.Fatalf("Stat = %+v, %v; want size %d", fi, err, LargeSize)
	}
	rc, err := s.Open(t.Context(), "nar/large.nar.zst")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := sha256.New()
	n, err := io.Copy(got, rc)
	if err != nil || n != LargeSize {
		t.Fatalf("read back %d bytes, %v; want %d", n, err, LargeSize)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Error("large object read back with different content")
	}
}

func write(t *testing.T, s store.Store, key, data string) store.Object {
	t.Helper()
	o, err := store.Write(t.Context(), s, key, strings.NewReader(data))
	if err != nil {
		t.Fatalf("Write(%q): %v", key, err)
	}
	return o
}

// wantFinished checks that CommitGroup finished every Pending it got.
func wantFinished(t *testing.T, stages ...[]store.Object) {
	t.Helper()
	for _, stage := range stages {
		for _, o := range stage {
			if _, err := o.Pending.Write([]byte("x")); !errors.Is(err, store.ErrFinished) {
				t.Errorf("Write to %s after CommitGroup = %v, want ErrFinished", o.Key, err)
			}
		}
	}
}

func testCommitGroup(t *testing.T, s store.Store) {
	data := []store.Object{write(t, s, "nar/a.nar.zst", "nar"), write(t, s, "a.provenance.json", "prov")}
	index := []store.Object{write(t, s, "a.narinfo", "info")}
	for _, k := range []string{"nar/a.nar.zst", "a.provenance.json", "a.narinfo"} {
		wantAbsent(t, s, k)
	}
	if err := store.CommitGroup(t.Context(), s, data, index); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"nar/a.nar.zst": "nar", "a.provenance.json": "prov", "a.narinfo": "info"} {
		if got := get(t, s, k); string(got) != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	wantFinished(t, data, index)
	// A group replaces, as Commit does.
	if err := store.CommitGroup(t.Context(), s, []store.Object{write(t, s, "a.narinfo", "info2")}); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "a.narinfo"); string(got) != "info2" {
		t.Errorf("a.narinfo = %q after replacing, want info2", got)
	}
}

// testCommitGroupStops: when a stage fails, no later stage is visible, and
// every Pending is finished.
func testCommitGroupStops(t *testing.T, s store.Store) {
	done := write(t, s, "b.provenance.json", "prov")
	if err := done.Pending.Commit(t.Context(), done.Key); err != nil {
		t.Fatal(err)
	}
	later := []store.Object{write(t, s, "b.narinfo", "info")}
	err := store.CommitGroup(t.Context(), s, []store.Object{done}, later)
	if !errors.Is(err, store.ErrFinished) {
		t.Errorf("CommitGroup with a finished Pending = %v, want ErrFinished", err)
	}
	wantAbsent(t, s, "b.narinfo")
	wantFinished(t, later)
}

func testCommitGroupCancelled(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	first, second := []store.Object{write(t, s, "nar/c.nar.zst", "nar")}, []store.Object{write(t, s, "c.narinfo", "info")}
	if err := store.CommitGroup(ctx, s, first, second); !errors.Is(err, context.Canceled) {
		t.Errorf("CommitGroup with cancelled ctx = %v, want context.Canceled", err)
	}
	wantAbsent(t, s, "nar/c.nar.zst")
	wantAbsent(t, s, "c.narinfo")
	wantFinished(t, first, second)
}

// testCommitGroupConcurrent: many writers committing groups and single
// objects at once (as a pusher's handlers do) each find theirs complete.
func testCommitGroupConcurrent(t *testing.T, s store.Store) {
	const writers = 24
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			nar := fmt.Sprintf("nar/w%d.nar.zst", i)
			if i%3 == 0 {
				errs <- store.Put(t.Context(), s, nar, strings.NewReader(nar))
				return
			}
			o1, err := store.Write(t.Context(), s, nar, strings.NewReader(nar))
			if err != nil {
				errs <- err
				return
			}
			info := fmt.Sprintf("w%d.narinfo", i)
			o2, err := store.Write(t.Context(), s, info, strings.NewReader(info))
			if err != nil {
				o1.Pending.Abort()
				errs <- err
				return
			}
			errs <- store.CommitGroup(t.Context(), s, []store.Object{o1}, []store.Object{o2})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	for i := range writers {
		nar := fmt.Sprintf("nar/w%d.nar.zst", i)
		if got := get(t, s, nar); string(got) != nar {
			t.Errorf("%s = %q", nar, got)
		}
		if i%3 != 0 {
			info := fmt.Sprintf("w%d.narinfo", i)
			if got := get(t, s, info); string(got) != info {
				t.Errorf("%s = %q", info, got)
			}
		}
	}
}
