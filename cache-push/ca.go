package cachepush

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nix-community/go-nix/pkg/nar"

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
// address: the NAR must hold one regular file (not executable for a flat
// one), whose contents' sha256 is the address. The check runs on a
// stream, so memory does not grow with the NAR; a mismatch turns the
// NAR's end of file into an error, before the NAR is stored.
type caReader struct {
	r    io.Reader
	pw   *io.PipeWriter
	done chan error
	once sync.Once
	err  error
}

// newCAReader wraps r for c; recursive addresses need no wrapper (the
// NAR hash is checked by ingest), so r is returned as is.
func newCAReader(r io.Reader, c contentaddr.CA, storePath string) io.ReadCloser {
	if c.Method == contentaddr.Recursive {
		return io.NopCloser(r)
	}
	pr, pw := io.Pipe()
	cr := &caReader{r: r, pw: pw, done: make(chan error, 1)}
	go func() {
		err := checkFlatNAR(pr, c, storePath)
		// Keep reading whatever comes, so the writer never blocks.
		io.Copy(io.Discard, pr)
		cr.done <- err
	}()
	return cr
}

func (cr *caReader) Read(b []byte) (int, error) {
	n, err := cr.r.Read(b)
	if n > 0 {
		cr.pw.Write(b[:n]) // the reader side never fails before EOF
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
		cr.pw.Close()
		cr.err = <-cr.done
	})
	return cr.err
}

func (cr *caReader) Close() error {
	cr.once.Do(func() {
		cr.pw.CloseWithError(errors.New("closed before the end of the NAR"))
		cr.err = <-cr.done
	})
	return nil
}

func checkFlatNAR(r io.Reader, c contentaddr.CA, storePath string) error {
	nr, err := nar.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: %s: NAR: %w", ErrContentAddress, storePath, err)
	}
	h, err := nr.Next()
	if err != nil {
		return fmt.Errorf("%w: %s: NAR: %w", ErrContentAddress, storePath, err)
	}
	if h.Path != "/" || h.Type != nar.TypeRegular {
		return fmt.Errorf("%w: %s: a %s address needs a single regular file, the NAR holds a %s", ErrContentAddress, storePath, c.Method, h.Type)
	}
	if h.Executable && c.Method == contentaddr.Flat {
		return fmt.Errorf("%w: %s: a flat fixed-output path must not be executable", ErrContentAddress, storePath)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, nr); err != nil {
		return fmt.Errorf("%w: %s: NAR: %w", ErrContentAddress, storePath, err)
	}
	if _, err := nr.Next(); err != io.EOF {
		return fmt.Errorf("%w: %s: NAR has more than one file (%v)", ErrContentAddress, storePath, err)
	}
	if got := sum.Sum(nil); string(got) != string(c.Hash[:]) {
		return fmt.Errorf("%w: %s: file sha256 %x, address %s", ErrContentAddress, storePath, got, c)
	}
	return nil
}
