package cachepush

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/contentaddr"
)

// ReasonContentAddress: a content-addressed path whose path, NAR or file
// does not match its content address.
const ReasonContentAddress = "content-address"

// ErrContentAddress is the root of every content-address mismatch.
var ErrContentAddress = errors.New("content address does not match")

// checkCAPath parses ca and checks that out's store path is the one Nix
// computes from it, its name and its references; for a recursive sha256
// address, that the address is the attested NAR hash. Whatever the
// builder claims, a path that passes names exactly this content.
func checkCAPath(ca string, out attest.Output) (contentaddr.CA, error) {
	c, err := contentaddr.Parse(ca)
	if err != nil {
		return c, fmt.Errorf("%w: %s: %w", ErrContentAddress, out.Path, err)
	}
	if err := c.Check(out.Path, out.References); err != nil {
		return c, fmt.Errorf("%w: %w", ErrContentAddress, err)
	}
	if c.Method == contentaddr.Recursive && c.Hash != out.NarHash {
		return c, fmt.Errorf("%w: %s: %s is not the NAR's sha256 %x", ErrContentAddress, out.Path, c, out.NarHash)
	}
	return c, nil
}

// caReader passes a NAR through while checking a flat or text content
// address (contentaddr.NARChecker). A mismatch turns the NAR's end of
// file into an error, before the NAR is stored.
type caReader struct {
	r    io.Reader
	k    *contentaddr.NARChecker
	once sync.Once
	err  error
}

// newCAReader wraps r for c; recursive addresses need no wrapper (the
// NAR hash is checked by ingest), so r is returned as is.
func newCAReader(r io.Reader, c contentaddr.CA, storePath string) io.ReadCloser {
	if c.Method == contentaddr.Recursive {
		return io.NopCloser(r)
	}
	return &caReader{r: r, k: c.NewNARChecker(storePath)}
}

func (cr *caReader) Read(b []byte) (int, error) {
	n, err := cr.r.Read(b)
	if n > 0 {
		cr.k.Write(b[:n])
	}
	if err == io.EOF {
		if cerr := cr.finish(); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}

// finish ends the check and returns its verdict; Close calls it too.
func (cr *caReader) finish() error {
	cr.once.Do(func() {
		if err := cr.k.Close(); err != nil {
			cr.err = fmt.Errorf("%w: %w", ErrContentAddress, err)
		}
	})
	return cr.err
}

// Close stops the check; a NAR not read to its end has no verdict.
func (cr *caReader) Close() error {
	cr.finish()
	return nil
}
