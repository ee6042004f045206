package nix

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ErrNarMismatch means a store path's files no longer match what the Nix
// database recorded: it was modified on disk after it was registered.
var ErrNarMismatch = errors.New("nix: store path differs from its registered NAR hash")

// countingHash counts and hashes what passes through it.
type countingHash struct {
	w io.Writer
	h hash.Hash
	n uint64
}

func (c *countingHash) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += uint64(n)
	return n, err
}

// HashNAR returns the sha256 and size of the NAR serialisation of the
// files at path, a real filesystem path (see RealPath), as nix-store
// --dump would produce them. It needs no Nix installation.
func HashNAR(path string) ([32]byte, uint64, error) {
	var sum [32]byte
	c := &countingHash{w: io.Discard, h: sha256.New()}
	if err := nar.DumpPath(c, path); err != nil {
		return sum, 0, fmt.Errorf("dump %s: %w", path, err)
	}
	copy(sum[:], c.h.Sum(nil))
	return sum, c.n, nil
}

// DumpNAR writes the NAR serialisation of a store path to w and checks it
// against the path's registered hash and size (from PathInfo). go-nix dumps
// byte-for-byte what nix-store --dump does, without a child process.
func (n *Nix) DumpNAR(w io.Writer, info PathInfo) error {
	c := &countingHash{w: w, h: sha256.New()}
	if err := nar.DumpPath(c, n.RealPath(info.Path)); err != nil {
		return fmt.Errorf("dump %s: %w", info.Path, err)
	}
	var sum [32]byte
	copy(sum[:], c.h.Sum(nil))
	if sum != info.NarHash || c.n != info.NarSize {
		return fmt.Errorf("%w: %s: dumped %d bytes sha256 %x, registered %d bytes sha256 %x",
			ErrNarMismatch, info.Path, c.n, sum, info.NarSize, info.NarHash)
	}
	return nil
}

// Fingerprint is what a Nix signature of a store path signs:
// "1;<path>;sha256:<nix32 NAR hash>;<NAR size>;<references, comma-separated>".
func Fingerprint(path string, narHash [32]byte, narSize uint64, references []string) string {
	return "1;" + path + ";sha256:" + nixbase32.EncodeToString(narHash[:]) + ";" +
		strconv.FormatUint(narSize, 10) + ";" + strings.Join(references, ",")
}
