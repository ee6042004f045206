package ingest

import (
	"context"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// frameSize is how much NAR goes into one zstd frame. Frames are
// independent (no match reaches into the previous one), so they compress in
// parallel, and a zstd stream may hold any number of them: `zstd -d`,
// libzstd (Nix) and klauspost's decoder read them as one stream. 2 MiB
// frames came within 0.6% of one 8 MiB-window stream on a NAR of
// /usr/lib/x86_64-linux-gnu (0.3% for 4 MiB, 1.2% for 1 MiB), and a frame
// with its buffers and encoder costs about 8 MiB.
const frameSize = 2 << 20

// bufSize is the read size: large enough that per-call overheads vanish,
// small enough that the bytes are still in cache when they are hashed.
const bufSize = 256 << 10

// frame is one frameSize piece of the NAR and its compressed form. done is
// closed when out is complete.
type frame struct {
	in, out []byte
	err     error // when compressing failed
	done    chan struct{}
}

// framePool bounds the frames alive in the whole process, over every NAR
// being ingested at once (a pusher ingests several): memory is
// cap(slots) × (frameSize + its compressed bound), however many NARs and
// however large. Idle frames are kept for reuse, so a long stream allocates
// nothing after its first frames.
type framePool struct {
	slots chan struct{} // a token per frame alive
	free  chan *frame   // idle frames, at most cap(slots)
}

func newFramePool(n int) *framePool {
	return &framePool{slots: make(chan struct{}, n), free: make(chan *frame, n)}
}

// frames is shared by all ingests: GOMAXPROCS frames compressing plus one
// filling and one waiting to be written keep every core busy on one NAR.
// Peak RSS: about 40 MiB at GOMAXPROCS 2, 53 at 4, 73 at 8 (TestPeakRSS).
var frames = newFramePool(runtime.GOMAXPROCS(0) + 2)

// newFrame returns a frame for the caller once it holds a slot.
func (p *framePool) newFrame() *frame {
	select {
	case f := <-p.free:
		f.in, f.out, f.err, f.done = f.in[:0], f.out[:0], nil, make(chan struct{})
		return f
	default:
		// The compressed bound of incompressible input, so EncodeAll never
		// grows out.
		return &frame{in: make([]byte, 0, frameSize), out: make([]byte, 0, frameSize+frameSize>>7+1<<10), done: make(chan struct{})}
	}
}

func (p *framePool) release(f *frame) {
	select {
	case p.free <- f:
	default: // cannot happen: free holds at most as many as slots
	}
	<-p.slots
}

// encoderPool holds the idle encoders of one level, the most recently
// used on top, so only as many exist as ever compressed at once (zstd's
// own EncodeAll concurrency would cycle through GOMAXPROCS of them). An
// encoder's match tables cost about 10 ms to create, more than compressing
// a small store path, so they are kept.
type encoderPool struct {
	level zstd.EncoderLevel
	mu    sync.Mutex
	idle  []*zstd.Encoder
}

var encoderPools sync.Map // zstd.EncoderLevel → *encoderPool

func encodersFor(level zstd.EncoderLevel) *encoderPool {
	p, _ := encoderPools.LoadOrStore(level, &encoderPool{level: level})
	return p.(*encoderPool)
}

func (p *encoderPool) get() (*zstd.Encoder, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		enc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return enc, nil
	}
	p.mu.Unlock()
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(p.level),
		zstd.WithEncoderConcurrency(1),
		// A frame is never longer than frameSize, so a larger window finds
		// nothing more; and the encoder's history buffer is twice the window
		// unless memory is lowered, which makes it one frame.
		zstd.WithWindowSize(frameSize),
		zstd.WithLowerEncoderMem(true),
		// Write one frame even for an empty input, as the zstd CLI does.
		zstd.WithZeroFrames(true))
	if err != nil {
		return nil, fmt.Errorf("ingest: zstd level %v: %w", p.level, err)
	}
	return enc, nil
}

func (p *encoderPool) put(enc *zstd.Encoder) {
	p.mu.Lock()
	p.idle = append(p.idle, enc)
	p.mu.Unlock()
}

// compress makes f.out the zstd frame of f.in.
func (p *encoderPool) compress(f *frame) {
	defer close(f.done)
	enc, err := p.get()
	if err != nil {
		f.err = err
		return
	}
	f.out = enc.EncodeAll(f.in, f.out[:0])
	p.put(enc)
}

// frameWriter cuts one NAR into frames, compresses up to workers of them
// at once and writes them to w in order. It is used by one goroutine; the
// compressions run in goroutines it starts and always waits for (finish or
// abort).
type frameWriter struct {
	pool    *framePool
	enc     *encoderPool
	w       io.Writer
	workers int
	cur     *frame   // being filled; nil before the first read
	queue   []*frame // compressing or compressed, in NAR order
	sent    int      // frames handed to a compressor
}

func newFrameWriter(pool *framePool, enc *encoderPool, w io.Writer, workers int) *frameWriter {
	return &frameWriter{pool: pool, enc: enc, w: w, workers: workers, queue: make([]*frame, 0, workers)}
}

// readFrom reads r to its end into frames, feeding every byte to h as well,
// and returns how many bytes it read. ctx is checked once per read.
func (fw *frameWriter) readFrom(ctx context.Context, h hash.Hash, r io.Reader) (uint64, error) {
	var n uint64
	for {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("ingest: after %d bytes: %w", n, err)
		}
		if fw.cur == nil {
			if err := fw.take(ctx); err != nil {
				return n, fmt.Errorf("ingest: after %d bytes: %w", n, err)
			}
		}
		f := fw.cur
		// Reads of bufSize keep the bytes in cache between the read and
		// the hash.
		m, rerr := r.Read(f.in[len(f.in):min(len(f.in)+bufSize, frameSize)])
		if m > 0 {
			h.Write(f.in[len(f.in) : len(f.in)+m]) // never fails
			f.in = f.in[:len(f.in)+m]
			n += uint64(m)
			if len(f.in) == frameSize {
				if err := fw.sendOn(true); err != nil {
					return n, err
				}
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("ingest: reading NAR after %d bytes: %w", n, rerr)
		}
	}
}

// take makes fw.cur an empty frame. While the pool has none free, it
// writes this NAR's finished frames, which frees theirs: a NAR holding
// frames never waits on other NARs, so several cannot deadlock.
func (fw *frameWriter) take(ctx context.Context) error {
	for {
		var oldest chan struct{} // nil (never ready) when nothing is queued
		if len(fw.queue) > 0 {
			oldest = fw.queue[0].done
		}
		select {
		case fw.pool.slots <- struct{}{}:
			fw.cur = fw.pool.newFrame()
			return nil
		case <-oldest:
			if err := fw.writeOldest(); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendOn starts compressing fw.cur, on a goroutine of its own
// (background) or on the caller's, first writing the oldest frame if
// workers are already busy with this NAR.
func (fw *frameWriter) sendOn(background bool) error {
	if len(fw.queue) == fw.workers {
		if err := fw.writeOldest(); err != nil {
			return err
		}
	}
	f := fw.cur
	fw.cur = nil
	fw.queue = append(fw.queue, f)
	fw.sent++
	if background {
		go fw.enc.compress(f)
	} else {
		fw.enc.compress(f)
	}
	return nil
}

func (fw *frameWriter) writeOldest() error {
	f := fw.queue[0]
	<-f.done
	fw.queue = fw.queue[1:]
	if f.err != nil {
		fw.pool.release(f)
		return f.err
	}
	_, err := fw.w.Write(f.out)
	fw.pool.release(f)
	if err != nil {
		return fmt.Errorf("ingest: writing compressed NAR: %w", err)
	}
	return nil
}

// finish compresses the last, partial frame and writes every frame. An
// empty NAR still gets one (empty) frame, as the zstd CLI writes.
func (fw *frameWriter) finish(ctx context.Context) error {
	if fw.cur == nil && fw.sent == 0 {
		if err := fw.take(ctx); err != nil {
			return fmt.Errorf("ingest: compressing: %w", err)
		}
	}
	if fw.cur != nil {
		if len(fw.cur.in) > 0 || fw.sent == 0 {
			// A NAR of one frame (under frameSize; most store paths are
			// a few KiB) is compressed here: on a goroutine of its own,
			// that goroutine's start and stack growth cost more than
			// compressing a small path, and there is nothing to overlap
			// it with. It is the frame the pool already gave it, so
			// memory stays bounded as before.
			if err := fw.sendOn(fw.sent > 0); err != nil {
				return err
			}
		} else {
			fw.pool.release(fw.cur)
			fw.cur = nil
		}
	}
	for len(fw.queue) > 0 {
		if err := fw.writeOldest(); err != nil {
			return err
		}
	}
	return nil
}

// abort waits for the compressions still running and returns all frames
// to the pool without writing them. It may follow finish.
func (fw *frameWriter) abort() {
	if fw.cur != nil {
		fw.pool.release(fw.cur)
		fw.cur = nil
	}
	for _, f := range fw.queue {
		<-f.done
		fw.pool.release(f)
	}
	fw.queue = nil
}
