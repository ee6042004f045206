package chunked

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sync/semaphore"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// What one reader of a chunked NAR fetches ahead of the chunk it hands
// out, when its chunks are not files. A NAR of a Go toolchain is 2,400
// chunks: fetched one after the other, each costs a round trip on S3
// (tens of milliseconds) while the socket waits. Fetching several at
// once overlaps them with each other and with the writing. The bounds
// keep a reader's memory flat in the NAR's size.
const (
	// fetchers is how many chunks one reader fetches at once.
	fetchers = 8
	// aheadBytes bounds the buffers of one reader's chunks, fetched or
	// being fetched, the one being handed out included: 4 MiB, four of
	// the longest pieces. A chunk file open counts as a buffer of its
	// size, so it bounds open files too.
	aheadBytes = 4 << 20
	// aheadChunks bounds their number: 64 chunks of a Go toolchain's
	// NAR (28 KB on average) take 2 MiB of buffers.
	aheadChunks = 64
)

// chunkReader reads a NAR's chunks in order, each checked against its
// list: a chunk that is missing, of another length or (unless it is a
// file, see fetch) whose bytes do not hash to its name fails the read
// with an error (ErrCorrupt for the last two) at that point of the NAR,
// instead of handing a damaged NAR to nix.
// Chunk files (store/local) are opened one at a time as they are
// needed. Other chunks are fetched ahead: the first one that is not a
// file starts a goroutine that fetches the rest, in up to fetchers
// goroutines at once; Close stops them and waits for them.
type chunkReader struct {
	ctx     context.Context // the caller's, until the read-ahead starts
	chunks  store.Store
	key     string
	entries []entry

	idx     int  // entries before it were fetched by next itself
	started bool // the dispatcher fetches the rest
	cancel  context.CancelFunc
	order   chan *future // the chunks in the NAR's order, as they are started
	budget  *semaphore.Weighted
	wg      sync.WaitGroup // the dispatcher and the fetches
	stopErr error          // why the dispatcher stopped early; set before order is closed

	cur  *future // the chunk being handed out
	rest []byte  // its bytes not handed out yet
	err  error
}

// future is one chunk being fetched; done is closed when it is fetched
// (file or buf is set) or failed (err). One fetched by next itself has
// no done.
type future struct {
	e    entry
	cost int64    // of the budget: its buffer's size; 0 if fetched by next
	file *os.File // the chunk's file, open
	left int64    // bytes of file not handed out yet
	buf  *[]byte  // or its bytes, from bufPool
	err  error
	done chan struct{}
}

// free closes the file or gives the buffer back.
func (f *future) free() {
	if f.file != nil {
		f.file.Close()
	}
	putBuf(f.buf)
	f.file, f.buf = nil, nil
}

func newChunkReader(ctx context.Context, chunks store.Store, key string, entries []entry) *chunkReader {
	return &chunkReader{ctx: ctx, chunks: chunks, key: key, entries: entries}
}

func (r *chunkReader) start() {
	r.started = true
	r.ctx, r.cancel = context.WithCancel(r.ctx)
	r.order = make(chan *future, aheadChunks)
	r.budget = semaphore.NewWeighted(aheadBytes)
	r.wg.Add(1)
	go r.dispatch()
}

// dispatch starts the fetches in order, within the bounds.
func (r *chunkReader) dispatch() {
	defer r.wg.Done()
	defer close(r.order)
	slots := make(chan struct{}, fetchers)
	for _, e := range r.entries[r.idx:] {
		if e.size == 0 {
			continue
		}
		f := &future{e: e, cost: bufSize(e.size), done: make(chan struct{})}
		if err := r.budget.Acquire(r.ctx, f.cost); err != nil {
			r.stopErr = err
			return
		}
		select {
		case slots <- struct{}{}:
		case <-r.ctx.Done():
			r.stopErr = r.ctx.Err()
			return
		}
		select {
		case r.order <- f:
		case <-r.ctx.Done():
			r.stopErr = r.ctx.Err()
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			f.err = r.fetch(f)
			<-slots
			close(f.done)
		}()
	}
}

// fetch opens one chunk and checks its length. A chunk file (store/local)
// stays open, to be sent by sendfile; other chunks (S3) are read into a
// buffer of bufPool and their bytes checked against their hash. Hashing
// a file's chunks too would cost more than serving them: sha256 runs at
// about 1.3 GB/s here against 2 GB/s for sendfile of a whole NAR file
// (BenchmarkServe), while nix checks each zstd frame's checksum and the
// NAR's hash anyway.
func (r *chunkReader) fetch(f *future) error {
	e := f.e
	rc, fi, err := store.OpenInfo(r.ctx, r.chunks, chunkKey(e.sum))
	if err != nil {
		return fmt.Errorf("chunked: %s: chunk %x: %w", r.key, e.sum, err)
	}
	if fi.Size != e.size {
		rc.Close()
		return fmt.Errorf("chunked: %s: %w: chunk %x is %d bytes, its list says %d", r.key, ErrCorrupt, e.sum, fi.Size, e.size)
	}
	if file, ok := rc.(*os.File); ok {
		f.file = file
		return nil
	}
	defer rc.Close()
	buf := getBuf(e.size)
	b := (*buf)[:e.size]
	if _, err := io.ReadFull(rc, b); err != nil {
		putBuf(buf)
		return r.short(e.sum, err)
	}
	if sha256.Sum256(b) != e.sum {
		putBuf(buf)
		return fmt.Errorf("chunked: %s: %w: chunk %x does not hash to its name", r.key, ErrCorrupt, e.sum)
	}
	f.buf = buf
	return nil
}

func (r *chunkReader) short(sum [32]byte, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: chunk %x shorter than its list says", ErrCorrupt, sum)
	}
	return fmt.Errorf("chunked: %s: %w", r.key, err)
}

// next makes the next chunk current, waiting for it; it returns false at
// the end (r.err is io.EOF) or on a failure (r.err says which).
func (r *chunkReader) next() bool {
	r.release()
	var f *future
	if r.started {
		var ok bool
		if f, ok = <-r.order; !ok {
			r.err = io.EOF
			if r.stopErr != nil {
				r.err = fmt.Errorf("chunked: %s: %w", r.key, r.stopErr)
			}
			return false
		}
		<-f.done
	} else {
		// Chunk files are opened here, one at a time: on a shared
		// machine, handing them over from other goroutines cost 10 %
		// more CPU per NAR and gained no speed (BenchmarkServe). The
		// first chunk that is not a file (S3) starts the read-ahead.
		for r.idx < len(r.entries) && r.entries[r.idx].size == 0 {
			r.idx++
		}
		if r.idx == len(r.entries) {
			r.err = io.EOF
			return false
		}
		f = &future{e: r.entries[r.idx]}
		r.idx++
		f.err = r.fetch(f)
		if f.err == nil && f.file == nil {
			r.start()
		}
	}
	r.cur = f
	if f.err != nil {
		r.err = f.err
		return false
	}
	if f.file != nil {
		f.left = f.e.size
	} else {
		r.rest = (*f.buf)[:f.e.size]
	}
	return true
}

// release gives the current chunk's buffer back.
func (r *chunkReader) release() {
	if r.cur == nil {
		return
	}
	r.cur.free()
	if r.cur.cost > 0 {
		r.budget.Release(r.cur.cost)
	}
	r.cur, r.rest = nil, nil
}

// empty says whether the current chunk is all handed out.
func (r *chunkReader) empty() bool {
	return len(r.rest) == 0 && (r.cur == nil || r.cur.left == 0)
}

// Read hands out the current chunk, and waits for the next one only when
// nothing was handed out yet.
func (r *chunkReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && r.err == nil {
		if r.empty() && (n > 0 || !r.next()) {
			break
		}
		if f := r.cur; f.file != nil {
			m, err := f.file.Read(p[n:min(int64(len(p)), int64(n)+f.left)])
			n += m
			f.left -= int64(m)
			if f.left > 0 && err != nil {
				r.err = r.short(f.e.sum, err)
			}
			continue
		}
		m := copy(p[n:], r.rest)
		r.rest = r.rest[m:]
		n += m
	}
	if n > 0 && r.err == io.EOF {
		return n, nil
	}
	return n, r.err
}

// WriteTo writes the rest of the NAR to w: each chunk file by w's
// ReadFrom (a socket's sendfile), other chunks with one Write each,
// without io.Copy's copy through a buffer.
func (r *chunkReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for r.err == nil {
		if r.empty() && !r.next() {
			break
		}
		if f := r.cur; f.file != nil {
			want := f.left
			n, err := io.Copy(w, io.LimitReader(f.file, want))
			total += n
			f.left -= n
			if err != nil {
				r.err = fmt.Errorf("chunked: %s: %w", r.key, err)
			} else if n < want {
				r.err = r.short(f.e.sum, io.ErrUnexpectedEOF)
			}
			continue
		}
		n, err := w.Write(r.rest)
		total += int64(n)
		r.rest = r.rest[n:]
		if err != nil {
			r.err = fmt.Errorf("chunked: %s: %w", r.key, err)
		}
	}
	if r.err == io.EOF {
		return total, nil
	}
	return total, r.err
}

// Close stops the fetches, waits for them and gives their buffers back.
func (r *chunkReader) Close() error {
	r.release()
	if r.started {
		r.cancel()
		r.wg.Wait()
		for f := range r.order {
			f.free()
		}
	}
	if r.err == nil || r.err == io.EOF {
		r.err = store.ErrFinished
	}
	return nil
}

// Chunk buffers come in sizes that are powers of two from minBuf to
// maxPiece, each size from its own pool, so that serving a NAR does not
// allocate its size in garbage.
const minBuf = 4 << 10

var bufPools [9]sync.Pool // minBuf << 8 == maxPiece

func bufClass(n int64) int {
	c := 0
	for int64(minBuf)<<c < n {
		c++
	}
	return c
}

func bufSize(n int64) int64 { return int64(minBuf) << bufClass(n) }

func getBuf(n int64) *[]byte {
	c := bufClass(n)
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, minBuf<<c)
	return &b
}

func putBuf(b *[]byte) {
	if b != nil {
		bufPools[bufClass(int64(cap(*b)))].Put(b)
	}
}
