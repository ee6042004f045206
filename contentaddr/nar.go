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
// be the canonical NAR of one regular file, not executable (as Nix makes
// a flat fixed output and a text file), whose contents' sha256 is the
// hash, and nothing after it. Write never fails; Close gives the verdict.
type NARChecker struct {
	c         CA
	storePath string
	sum       hash.Hash      // recursive: the whole NAR
	pw        *io.PipeWriter // flat, text: into the NAR parser
	n         uint64         // flat, text: bytes written
	done      chan fileVerdict
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
	k.pw, k.done = pw, make(chan fileVerdict, 1)
	go func() {
		size, err := c.checkFile(pr, storePath)
		// Keep reading whatever comes, so Write never blocks.
		io.Copy(io.Discard, pr)
		k.done <- fileVerdict{size, err}
	}()
	return k
}

// fileVerdict is checkFile's: the canonical size of the NAR it parsed.
type fileVerdict struct {
	size uint64
	err  error
}

// Write feeds the next bytes of the NAR.
func (k *NARChecker) Write(b []byte) (int, error) {
	if k.sum != nil {
		return k.sum.Write(b)
	}
	k.pw.Write(b) // the parser side drains to the end: no error before Close
	k.n += uint64(len(b))
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
	v := <-k.done
	if k.err = v.err; k.err == nil && k.n != v.size {
		// The parser stops at the NAR's end: bytes after it would be
		// hashed into the NAR's hash by the cache, and a client, which
		// reads only the NAR, would find the hash wrong.
		k.err = fmt.Errorf("%w: %s: %d bytes, the file's NAR is %d", ErrContentMismatch, k.storePath, k.n, v.size)
	}
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

// checkFile parses the NAR of a flat or text address, and returns the
// size of the canonical NAR of the file it holds.
func (c CA) checkFile(r io.Reader, storePath string) (uint64, error) {
	nr, err := nar.NewReader(r)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: NAR: %w", ErrContentMismatch, storePath, err)
	}
	h, err := nr.Next()
	if err != nil {
		return 0, fmt.Errorf("%w: %s: NAR: %w", ErrContentMismatch, storePath, err)
	}
	if h.Path != "/" || h.Type != nar.TypeRegular {
		return 0, fmt.Errorf("%w: %s: a %s address needs a single regular file, the NAR holds a %s", ErrContentMismatch, storePath, c.Method, h.Type)
	}
	if h.Executable {
		// Nix makes neither a flat fixed output nor a text file
		// executable: a client would install what the address does not.
		return 0, fmt.Errorf("%w: %s: a %s path must not be executable", ErrContentMismatch, storePath, c.Method)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, nr); err != nil {
		return 0, fmt.Errorf("%w: %s: NAR: %w", ErrContentMismatch, storePath, err)
	}
	if _, err := nr.Next(); err != io.EOF {
		return 0, fmt.Errorf("%w: %s: NAR has more than one file (%v)", ErrContentMismatch, storePath, err)
	}
	if got := sum.Sum(nil); string(got) != string(c.Hash[:]) {
		return 0, fmt.Errorf("%w: %s: file sha256 %x, address %s", ErrContentMismatch, storePath, got, c)
	}
	return fileNARSize(uint64(h.Size)), nil
}

// fileNARSize is the size of the canonical NAR of one regular,
// non-executable file of size bytes: "nix-archive-1", "(", "type",
// "regular", "contents", the contents, ")", each a length and the bytes
// padded to 8.
func fileNARSize(size uint64) uint64 {
	str := func(n uint64) uint64 { return 8 + (n+7)/8*8 }
	return str(13) + str(1) + str(4) + str(7) + str(8) + str(size) + str(1)
}
