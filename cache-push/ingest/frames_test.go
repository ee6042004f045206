package ingest

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// frameNAR is a NAR of two and a half frames.
func frameNAR(seed uint64) []byte {
	return semiCompressible(seed, 2*frameSize+frameSize/2)
}

func readStored(t *testing.T, s store.Store, key string) []byte {
	t.Helper()
	b, err := store.ReadAll(t.Context(), s, key, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNARFramesIndependentOfConcurrency: how many frames compress at once
// does not change the file, so pushers on machines with different core
// counts write the same key for the same NAR.
func TestNARFramesIndependentOfConcurrency(t *testing.T) {
	data := frameNAR(1)
	var first Result
	for i, conc := range []int{1, 2, 7, 0} {
		s := newStore(t)
		res, err := NAR(t.Context(), s, bytes.NewReader(data), expectFor(data), Options{Concurrency: conc})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = res
			stored := readStored(t, s, res.URL)
			if got := decompress(t, stored); !bytes.Equal(got, data) {
				t.Fatalf("the frames decompress to %d bytes that differ from the %d-byte NAR", len(got), len(data))
			}
			continue
		}
		if res != first {
			t.Errorf("Concurrency %d gave %+v, Concurrency 1 gave %+v", conc, res, first)
		}
	}
}

// TestNARConcurrentIngests: more NARs at once than the process has frames,
// each asking for more workers than there are frames, all finish (no NAR
// waits for frames another holds while holding its own) with the right
// bytes.
func TestNARConcurrentIngests(t *testing.T) {
	n := 3 * cap(frames.slots)
	s := newStore(t)
	var wg sync.WaitGroup
	errs := make([]error, n)
	results := make([]Result, n)
	datas := make([][]byte, n)
	for i := range n {
		datas[i] = frameNAR(uint64(100 + i))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	for i := range n {
		wg.Go(func() {
			results[i], errs[i] = NAR(ctx, s, bytes.NewReader(datas[i]), expectFor(datas[i]), Options{Concurrency: 2 * cap(frames.slots)})
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("NAR %d: %v", i, errs[i])
		}
		if got := decompress(t, readStored(t, s, results[i].URL)); !bytes.Equal(got, datas[i]) {
			t.Errorf("NAR %d decompresses to other bytes", i)
		}
	}
	if len(frames.slots) != 0 {
		t.Errorf("%d frames still taken after every ingest returned", len(frames.slots))
	}
}

// TestFrameWriterWaitsForFramesUntilCancelled: with every frame of the pool
// taken by others, a NAR waits, and gives up when its ctx ends.
func TestFrameWriterWaitsForFramesUntilCancelled(t *testing.T) {
	enc := encodersFor(zstd.SpeedFastest)
	pool := newFramePool(1)
	pool.slots <- struct{}{} // held by another NAR
	fw := newFrameWriter(pool, enc, &bytes.Buffer{}, runtime.GOMAXPROCS(0))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := fw.readFrom(ctx, nullHash{}, bytes.NewReader([]byte("nix-archive-1")))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("readFrom with no frame free = %v, want DeadlineExceeded", err)
	}
	fw.abort()
	if len(pool.slots) != 1 {
		t.Errorf("%d slots taken after abort, want only the other NAR's", len(pool.slots))
	}
}

// failingWriter fails every write after the first n bytes.
type failingWriter struct{ n int }

var errDiskFull = errors.New("disk full")

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errDiskFull
	}
	w.n -= len(p)
	return len(p), nil
}

// TestFrameWriterWriteError: a failed write of a frame is returned, and
// the frames still compressing are waited for and given back.
func TestFrameWriterWriteError(t *testing.T) {
	enc := encodersFor(zstd.SpeedFastest)
	pool := newFramePool(4)
	data := frameNAR(5)
	fw := newFrameWriter(pool, enc, &failingWriter{n: 1}, 2)
	_, err := fw.readFrom(t.Context(), nullHash{}, bytes.NewReader(data))
	if err == nil {
		err = fw.finish(t.Context())
	}
	if !errors.Is(err, errDiskFull) {
		t.Fatalf("ingest into a full disk = %v, want %v", err, errDiskFull)
	}
	fw.abort()
	if len(pool.slots) != 0 {
		t.Errorf("%d frames still taken after abort", len(pool.slots))
	}
}

type nullHash struct{}

func (nullHash) Write(p []byte) (int, error) { return len(p), nil }
func (nullHash) Sum(b []byte) []byte         { return b }
func (nullHash) Reset()                      {}
func (nullHash) Size() int                   { return 0 }
func (nullHash) BlockSize() int              { return 1 }
