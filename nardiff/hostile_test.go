package nardiff

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

// allocated runs f and returns the bytes it allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// zeros writes n zero bytes then tail.
func zeros(w io.Writer, n int64, tail string) {
	buf := make([]byte, 1<<20)
	for ; n > 0; n -= int64(len(buf)) {
		w.Write(buf[:min(n, int64(len(buf)))])
	}
	io.WriteString(w, tail)
}

const bomb = 256 << 20

// TestHostileZipBomb: a jar member that inflates to 256 MiB on each side
// (differing only at its end) is read to MaxMemberSize and no further.
func TestHostileZipBomb(t *testing.T) {
	mk := func(tail string) []byte {
		var b bytes.Buffer
		zw := zip.NewWriter(&b)
		zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) { return flate.NewWriter(w, flate.BestSpeed) })
		f, _ := zw.CreateHeader(&zip.FileHeader{Name: "bomb", Method: zip.Deflate})
		zeros(f, bomb, tail)
		g, _ := zw.Create("small")
		io.WriteString(g, tail)
		zw.Close()
		return narOf(t, ent{path: "/x.jar", data: b.String()})
	}
	a, b := mk("a"), mk("b")
	var r *Report
	start := time.Now()
	n := allocated(func() { r = diffBytes(t, a, b, opts()) })
	if el := time.Since(start); el > 30*time.Second {
		t.Errorf("took %v", el)
	}
	if n > 3*uint64(DefaultLimits.MaxExpand) {
		t.Errorf("allocated %d MiB for a bomb of %d MiB per side", n>>20, bomb>>20)
	}
	f := file(t, r, "/x.jar")
	mustContain(t, strings.Join(f.Notes, ";"), "decompressed past the limit")
	mustContain(t, leafName(f), "small")
}

// TestHostileGzipBomb: the same through gzip, with tight limits.
func TestHostileGzipBomb(t *testing.T) {
	mk := func(tail string) []byte {
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		zeros(zw, bomb, tail)
		zw.Close()
		return narOf(t, ent{path: "/x.gz", data: b.String()})
	}
	a, b := mk("a"), mk("b")
	var r *Report
	n := allocated(func() { r = diffBytes(t, a, b, Options{BuildTime: build, Limits: SummaryLimits}) })
	if n > 64<<20 {
		t.Errorf("allocated %d MiB under SummaryLimits", n>>20)
	}
	mustContain(t, r.Text(), "decompressed past the limit")
}

// narGen writes a NAR of one directory with n files without building it
// in memory: a stream of millions of entries.
func narGen(w io.Writer, n int, content func(i int) string) error {
	var buf bytes.Buffer
	str := func(s string) {
		var l [8]byte
		binary.LittleEndian.PutUint64(l[:], uint64(len(s)))
		buf.Write(l[:])
		buf.WriteString(s)
		if p := len(s) % 8; p != 0 {
			buf.Write(make([]byte, 8-p))
		}
	}
	for _, s := range []string{"nix-archive-1", "(", "type", "directory"} {
		str(s)
	}
	for i := range n {
		for _, s := range []string{"entry", "(", "name", fmt.Sprintf("f%09d", i), "node", "(", "type", "regular", "contents", content(i), ")", ")"} {
			str(s)
		}
		if buf.Len() > 1<<16 {
			if _, err := w.Write(buf.Bytes()); err != nil {
				return err
			}
			buf.Reset()
		}
	}
	str(")")
	_, err := w.Write(buf.Bytes())
	return err
}

func genReader(n int, content func(int) string) io.Reader {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(narGen(pw, n, content)) }()
	return pr
}

// peakHeap runs f and returns the largest heap in use seen while it ran.
func peakHeap(f func()) uint64 {
	var peak uint64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	f()
	close(done)
	<-stopped
	return peak
}

// TestHostileManyEntries: two generated NARs of five million entries
// each, every one differing, stop at MaxEntries with ErrLimit, report
// MaxDiffs and count the rest, in bounded memory. (go-nix's reader costs
// about 25 µs an entry here, so the test lowers MaxEntries; the default
// of about a million bounds a diff to well under a minute.)
func TestHostileManyEntries(t *testing.T) {
	const n = 5_000_000
	lim := Limits{MaxEntries: 200_000}
	var r *Report
	var err error
	start := time.Now()
	peak := peakHeap(func() {
		r, err = Diff(context.Background(), genReader(n, func(int) string { return "a" }), genReader(n, func(int) string { return "b" }), Options{Limits: lim})
	})
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v, want ErrLimit", err)
	}
	if len(r.Files) != DefaultLimits.MaxDiffs || r.Differing < lim.MaxEntries-1 {
		t.Fatalf("files %d differing %d", len(r.Files), r.Differing)
	}
	if peak > 256<<20 {
		t.Errorf("heap peaked at %d MiB", peak>>20)
	}
	t.Logf("%d entries per side in %v, heap peak %d MiB", r.EntriesA, time.Since(start), peak>>20)
	mustContain(t, r.Text(), "the rest are only counted")
}

// TestHostileDeadline: the ctx bounds the time of a diff that would run
// long, and the partial report comes back with the ctx error.
func TestHostileDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	r, err := Diff(ctx, genReader(50_000_000, func(int) string { return "x" }), genReader(50_000_000, func(int) string { return "x" }), Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("stopped after %v", el)
	}
	if r == nil || r.EntriesA == 0 {
		t.Fatalf("no partial report")
	}
}

// TestHostileDeepNesting: a gzip of a gzip … 30 deep is opened MaxDepth
// levels and no further; 1500 nested directories are walked.
func TestHostileDeepNesting(t *testing.T) {
	mk := func(s string) string {
		for range 30 {
			s = gz(t, s, time.Unix(0, 0))
		}
		return s
	}
	r := diffBytes(t, narOf(t, ent{path: "/x.gz", data: mk("a")}), narOf(t, ent{path: "/x.gz", data: mk("b")}), opts())
	depth, f := 0, file(t, r, "/x.gz")
	for len(f.Members) > 0 {
		f, depth = f.Members[0], depth+1
	}
	if depth != DefaultLimits.MaxDepth {
		t.Errorf("opened %d levels, want %d", depth, DefaultLimits.MaxDepth)
	}
	mustContain(t, strings.Join(f.Notes, ";"), "nested deeper than")

	var ents []ent
	p := ""
	for range 1500 {
		p += "/d"
		ents = append(ents, ent{path: p, dir: true})
	}
	ea := append(ents[:len(ents):len(ents)], ent{path: p + "/f", data: "1"})
	eb := append(ents[:len(ents):len(ents)], ent{path: p + "/f", data: "2"})
	r = diffBytes(t, narOf(t, ea...), narOf(t, eb...), opts())
	if r.Differing != 1 || file(t, r, p+"/f").Kind != Contents {
		t.Fatalf("deep file: %d differing", r.Differing)
	}
}

func TestHostileOutputBound(t *testing.T) {
	var ea, eb []ent
	for i := range 500 {
		ea = append(ea, ent{path: fmt.Sprintf("/f%04d", i), data: strings.Repeat("line a\n", 50)})
		eb = append(eb, ent{path: fmt.Sprintf("/f%04d", i), data: strings.Repeat("line b\n", 50)})
	}
	r := diffBytes(t, narOf(t, ea...), narOf(t, eb...), Options{Limits: Limits{MaxOutput: 10000}})
	if len(r.Text()) > 200_000 {
		t.Errorf("text of %d bytes", len(r.Text()))
	}
	mustContain(t, r.Text(), "further details dropped")
	if r.Differing != 500 {
		t.Errorf("differing %d", r.Differing)
	}
}

func TestMalformed(t *testing.T) {
	good := narOf(t, ent{path: "/f", data: "x"})
	for name, bad := range map[string][]byte{
		"garbage":   []byte("not a nar at all, just text"),
		"truncated": good[:len(good)-20],
	} {
		_, err := Diff(context.Background(), bytes.NewReader(good), bytes.NewReader(bad), Options{})
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

// TestNoGoroutineLeak: diffs stopped early (a limit, a malformed side, a
// cancelled ctx) leave no parser goroutine behind; a pusher runs many.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	good := narOf(t, ent{path: "/a", data: "1"}, ent{path: "/b", data: "2"}, ent{path: "/c", data: "3"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 50 {
		Diff(context.Background(), bytes.NewReader(good), bytes.NewReader(good), Options{Limits: Limits{MaxEntries: 2}})
		Diff(context.Background(), bytes.NewReader(good), bytes.NewReader(good[:len(good)-30]), Options{})
		Diff(ctx, bytes.NewReader(good), bytes.NewReader(good), Options{})
		Diff(context.Background(), bytes.NewReader(good), strings.NewReader("garbage"), Options{})
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines before, %d after 200 diffs", before, runtime.NumGoroutine())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
