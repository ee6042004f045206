package chunked

import (
	"fmt"
	"io"

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
// input (as the zstd command does), never nothing.
func (s *Store) encode(c *fastcdc.Chunker, w io.Writer) error {
	buf := make([]byte, 0, s.o.MaxSize+s.o.MaxSize/8)
	frames := 0
	for {
		ch, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		buf = s.enc.EncodeAll(ch.Data, buf[:0])
		if _, err := w.Write(buf); err != nil {
			return err
		}
		frames++
	}
	if frames == 0 {
		if _, err := w.Write(s.enc.EncodeAll(nil, buf[:0])); err != nil {
			return err
		}
	}
	return nil
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
