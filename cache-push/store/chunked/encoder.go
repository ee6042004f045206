package chunked

import (
	"fmt"
	"io"
	"runtime"

	fastcdc "github.com/jotfs/fastcdc-go"
)

// NAREncoder returns a compressor for a NAR written to this store
// (store.NAREncoder): it cuts the uncompressed NAR with FastCDC and writes
// each chunk to w as its own zstd frame, so equal chunks of two NARs
// become equal frames, hence equal chunks of the store. The output is one
// valid zstd stream. Close flushes the last chunk; it must be called
// (also on failure) to stop the encoder's goroutine.
func (s *Store) NAREncoder(w io.Writer) (io.WriteCloser, error) {
	pr, pw := io.Pipe()
	c, err := fastcdc.NewChunker(pr, fastcdc.Options{MinSize: s.o.MinSize, AverageSize: s.o.AvgSize, MaxSize: s.o.MaxSize})
	if err != nil {
		return nil, fmt.Errorf("chunked: %w", err)
	}
	e := &encoder{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		e.err = s.encode(c, w)
		pr.CloseWithError(errOrClosed(e.err)) // unblock a Write after a failure
	}()
	return e, nil
}

// encode writes one frame per chunk, or one empty frame for an empty
// input (as the zstd command does), never nothing. Chunks are compressed
// on up to encoders cores at once (EncodeAll compresses each alone, the
// same way whichever goroutine runs it) and written in order.
func (s *Store) encode(c *fastcdc.Chunker, w io.Writer) error {
	order := make(chan *frame, 2*encoders) // compressing or compressed, in order
	slots := make(chan struct{}, encoders)
	stop := make(chan struct{}) // closed when a write failed
	written := make(chan error, 1)
	go func() { written <- writeFrames(w, order, stop) }()
	var err error
	frames := 0
loop:
	for {
		ch, cerr := c.Next()
		if cerr == io.EOF {
			break
		}
		if cerr != nil {
			err = cerr
			break
		}
		f := &frame{done: make(chan struct{})}
		in := append([]byte(nil), ch.Data...) // the chunker reuses ch.Data
		select {
		case slots <- struct{}{}:
		case <-stop:
			break loop
		}
		select {
		case order <- f:
		case <-stop:
			<-slots
			break loop
		}
		go func() {
			f.b = s.enc.EncodeAll(in, make([]byte, 0, len(in)/2))
			<-slots
			close(f.done)
		}()
		frames++
	}
	if frames == 0 && err == nil {
		f := &frame{b: s.enc.EncodeAll(nil, nil), done: make(chan struct{})}
		close(f.done)
		select {
		case order <- f:
		case <-stop:
		}
	}
	close(order)
	if werr := <-written; werr != nil {
		return werr
	}
	return err
}

// encoders bounds how many chunks one NAR compresses at once; each holds
// an encoder's tables (a few MiB at the best levels).
var encoders = min(runtime.GOMAXPROCS(0), 8)

// frame is one chunk being compressed; done is closed when b is set.
type frame struct {
	b    []byte
	done chan struct{}
}

// writeFrames writes the frames in order until order is closed, or until
// a write fails: then it closes stop and waits for the frames already
// started.
func writeFrames(w io.Writer, order chan *frame, stop chan struct{}) error {
	var err error
	for f := range order {
		<-f.done
		if err != nil {
			continue
		}
		if _, err = w.Write(f.b); err != nil {
			close(stop)
		}
	}
	return err
}

func errOrClosed(err error) error {
	if err != nil {
		return err
	}
	return io.ErrClosedPipe
}

type encoder struct {
	pw   *io.PipeWriter
	done chan struct{}
	err  error // set before done is closed
}

func (e *encoder) Write(b []byte) (int, error) {
	n, err := e.pw.Write(b)
	if err != nil {
		<-e.done
		if e.err != nil {
			err = e.err
		}
		return n, fmt.Errorf("chunked: compressing: %w", err)
	}
	return n, nil
}

func (e *encoder) Close() error {
	e.pw.Close()
	<-e.done
	if e.err != nil {
		return fmt.Errorf("chunked: compressing: %w", e.err)
	}
	return nil
}
