package chunked

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// A chunk list is stored under the NAR's own key and says which chunks,
// in order, make the NAR file:
//
//	provenix-chunk-list 1
//	size <bytes of the NAR file>
//	<64 hex sha256 of chunk 1> <its length>
//	…
//
// Text, so that an operator can read one; about 80 bytes per chunk, 1.3 MB
// for a 2 GiB NAR at 64 KiB per chunk.
const listMagic = "provenix-chunk-list 1\n"

// maxListSize bounds the chunk list read into memory (a 100 GiB NAR at the
// smallest chunks would not reach it).
const maxListSize = 256 << 20

// ErrCorrupt means a chunk list does not parse, or a chunk does not have
// the length its list says.
var ErrCorrupt = errors.New("chunked: corrupt chunk list or chunk")

type entry struct {
	sum  [32]byte
	size int64
}

type chunkList struct {
	size    int64
	entries []entry
}

func (l *chunkList) add(sum [32]byte, size int64) {
	l.entries = append(l.entries, entry{sum, size})
	l.size += size
}

func (l *chunkList) encode() []byte {
	var b bytes.Buffer
	b.Grow(len(listMagic) + 32 + len(l.entries)*80)
	b.WriteString(listMagic)
	fmt.Fprintf(&b, "size %d\n", l.size)
	var hx [64]byte
	for _, e := range l.entries {
		hex.Encode(hx[:], e.sum[:])
		b.Write(hx[:])
		b.WriteByte(' ')
		b.WriteString(strconv.FormatInt(e.size, 10))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// isList reports whether the object that starts with head is a chunk list.
// A NAR file written before chunking was turned on starts with a
// compressor's magic bytes or "\x0d\0\0\0\0\0\0\0nix-archive-1" and is
// served as it is.
func isList(head []byte) bool { return bytes.HasPrefix(head, []byte(listMagic)) }

// readHeader reads the magic and size lines of the chunk list in r.
func readHeader(r *bufio.Reader) (int64, error) {
	magic := make([]byte, len(listMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != listMagic {
		return 0, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("%w: no size line: %v", ErrCorrupt, err)
	}
	v, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "size ")
	size, perr := strconv.ParseInt(v, 10, 64)
	if !ok || perr != nil || size < 0 {
		return 0, fmt.Errorf("%w: size line %q", ErrCorrupt, line)
	}
	return size, nil
}

// parseList reads a whole chunk list and checks that its chunks add up to
// its size. No chunk is longer than maxPiece (Create cuts there), so a
// reader's buffers stay bounded and the sum cannot overflow.
func parseList(r io.Reader) (*chunkList, error) {
	br := bufio.NewReader(io.LimitReader(r, maxListSize+1))
	want, err := readHeader(br)
	if err != nil {
		return nil, err
	}
	l := &chunkList{}
	for n := 1; ; n++ {
		// ReadSlice: no copy of each line (a list is read whenever its
		// NAR is served; 2,433 lines for a Go toolchain).
		line, err := br.ReadSlice('\n')
		if err == io.EOF && len(line) == 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: chunk %d: %v", ErrCorrupt, n, err)
		}
		hx, sz, ok := bytes.Cut(line[:len(line)-1], []byte{' '})
		var e entry
		size, perr := parseSize(sz)
		if !ok || len(hx) != 64 || perr != nil || size > maxPiece {
			return nil, fmt.Errorf("%w: chunk %d: %q", ErrCorrupt, n, line)
		}
		if _, err := hex.Decode(e.sum[:], hx); err != nil {
			return nil, fmt.Errorf("%w: chunk %d: %q", ErrCorrupt, n, line)
		}
		l.add(e.sum, size)
	}
	if l.size != want {
		return nil, fmt.Errorf("%w: chunks add up to %d bytes, the list says %d", ErrCorrupt, l.size, want)
	}
	return l, nil
}

// parseSize parses a chunk's length: decimal digits, at most 7 of them
// (maxPiece has 7), without strconv's allocation of the string.
func parseSize(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 7 {
		return 0, errors.New("bad length")
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errors.New("bad length")
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}
