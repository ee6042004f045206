package contentaddr

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nix-community/go-nix/pkg/nar"
)

// ErrContentMismatch: the NAR is not the content its address names.
var ErrContentMismatch = errors.New("contentaddr: content does not match its content address")

// NARChecker checks a NAR written to it against a content address as it
// streams, so memory does not grow with the NAR: for a recursive address
// the NAR's sha256 must be the hash; for a flat or text one the NAR must
// hold one regular file (not executable for a flat one, as Nix requires
// of a flat fixed output) whose contents' sha256 is the hash. Write never
// fails; Close gives the verdict.
type NARChecker struct {
	c         CA
	storePath string
	sum       hash.Hash      // recursive: the whole NAR
	pw        *io.PipeWriter // flat, text: into the NAR parser
	done      chan error
	closed    bool
	err       error
}

// NewNARChecker returns a checker of c for the NAR of storePath (named in
// errors only).
func (c CA) NewNARChecker(storePath string) *NARChecker {
	k := &NARChecker{c: c, storePath: storePath}
	if c.Method == Recursive {
		k.sum = sha256.New()
		return k
	}
	pr, pw := io.Pipe()
	k.pw, k.done = pw, make(chan error, 1)
	go func() {
		err := c.checkFile(pr, storePath)
		// Keep reading whatever comes, so Write never blocks.
		io.Copy(io.Discard, pr)
		k.done <- err
	}()
	return k
}

// Write feeds the next bytes of the NAR.
func (k *NARChecker) Write(b []byte) (int, error) {
	if k.sum != nil {
		return k.sum.Write(b)
	}
	k.pw.Write(b) // the parser side drains to the end: no error before Close
	return len(b), nil
}

// Close ends the NAR and returns the verdict (the same on every call). A
// NAR closed before its end is a mismatch.
func (k *NARChecker) Close() error {
	if k.closed {
		return k.err
	}
	k.closed = true
	if k.sum != nil {
		if got := k.sum.Sum(nil); string(got) != string(k.c.Hash[:]) {
			k.err = fmt.Errorf("%w: %s: NAR sha256 %x, address %s", ErrContentMismatch, k.storePath, got, k.c)
		}
		return k.err
	}
	k.pw.Close()
	k.err = <-k.done
	return k.err
}

// CheckNAR reads a whole NAR from r and checks it against c, as
// NARChecker does. A read error is returned as is.
func (c CA) CheckNAR(r io.Reader, storePath string) error {
	k := c.NewNARChecker(storePath)
	if _, err := io.Copy(k, r); err != nil {
		k.Close()
		return err
	}
	return k.Close()
}

// checkFile parses the NAR of a flat or text address.
func (c CA) checkFile(r io.Reader, storePath string) error {
	nr, err := nar.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: %s: NAR: %w", ErrContentMismatch, storePath, err)
	}
	h, err := nr.Next()
	if err != nil {
		return fmt.Errorf("%w: %s: NAR: %w", ErrContentMismatch, storePath, err)
	}
	if h.Path != "/" || h.Type != nar.TypeRegular {
		return fmt.Errorf("%w: %s: a %s address needs a single regular file, the NAR holds a %s", ErrContentMismatch, storePath, c.Method, h.Type)
	}
	if h.Executable && c.Method == Flat {
		return fmt.Errorf("%w: %s: a flat fixed-output path must not be executable", ErrContentMismatch, storePath)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, nr); err != nil {
		return fmt.Errorf("%w: %s: NAR: %w", ErrContentMismatch, storePath, err)
	}
	if _, err := nr.Next(); err != io.EOF {
		return fmt.Errorf("%w: %s: NAR has more than one file (%v)", ErrContentMismatch, storePath, err)
	}
	if got := sum.Sum(nil); string(got) != string(c.Hash[:]) {
		return fmt.Errorf("%w: %s: file sha256 %x, address %s", ErrContentMismatch, storePath, got, c)
	}
	return nil
}
